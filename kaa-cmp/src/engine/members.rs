//! Replicas sharing the work by endpoint (kaa-rs extension): the live members
//! of this CMX instance, the owner of each endpoint by rendezvous hashing, and
//! what changes when the members change. See the module docs, "Replicas".

use super::*;

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// The byte between the replica ID and the endpoint ID in the hashed key (a
/// byte no UTF-8 string contains, so `("a", "bc")` and `("ab", "c")` differ).
const SEPARATOR: u8 = 0xff;

fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        state ^= u64::from(b);
        state = state.wrapping_mul(FNV_PRIME);
    }
    state
}

/// The splitmix64 finalizer: FNV-1a's high bits depend weakly on the last
/// bytes; this spreads every input bit over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The rendezvous weight of `endpoint_id` for `replica_id`:
/// `splitmix64_finalize(fnv1a_64(replica_id ‖ 0xFF ‖ endpoint_id))`, over the
/// UTF-8 bytes. The endpoint's owner is the member with the highest weight
/// (ties: the greater replica ID). Stable across versions and platforms: every
/// replica, and any other implementation, computes the same owner from the
/// same member list.
pub fn rendezvous_weight(replica_id: &str, endpoint_id: &str) -> u64 {
    let prefix = fnv1a(fnv1a(FNV_OFFSET, replica_id.as_bytes()), &[SEPARATOR]);
    mix(fnv1a(prefix, endpoint_id.as_bytes()))
}

/// The owner of `endpoint_id` among `members` by rendezvous
/// (highest-random-weight) hashing with [`rendezvous_weight`]; `None` when
/// there are no members.
pub fn rendezvous_owner<'m, S: AsRef<str>>(members: &'m [S], endpoint_id: &str) -> Option<&'m str> {
    members
        .iter()
        .map(|m| (rendezvous_weight(m.as_ref(), endpoint_id), m.as_ref()))
        .max()
        .map(|(_, m)| m)
}

/// One member: its ID, the FNV state after `ID ‖ 0xFF` (the part of the
/// weight that does not depend on the endpoint) and its hand-over subject.
pub(super) struct Member {
    pub(super) id: Arc<str>,
    prefix: u64,
    /// `kaa.v1.replica.<id>.esp.ClientData`.
    pub(super) subject: Arc<str>,
}

fn ids_of(members: &[Member]) -> Vec<&str> {
    members.iter().map(|m| &*m.id).collect()
}

/// The live members of this CMX instance, as the driver last reported them.
#[derive(Default)]
pub(super) struct Membership {
    /// Sorted by ID; empty: membership is off and this replica serves every
    /// endpoint.
    pub(super) members: Vec<Member>,
    /// How many times the member list changed.
    pub(super) changes: u64,
    /// When it last changed.
    pub(super) changed_at: Option<UnixMillis>,
    /// This replica's view: [`membership_view`] of `members`.
    pub(super) view: u64,
    /// The view each other replica last confirmed it applied
    /// ([`Cmx::set_member_view`]).
    pub(super) confirmed: HashMap<Arc<str>, u64>,
    /// Deliveries wait while this is up: this replica joined live members and
    /// not all of them have confirmed its view yet ([`CmxConfig::handover_delay`]).
    pub(super) fence: Option<Fence>,
}

/// The hand-over fence of a replica that joined live members: until every
/// other member has confirmed that it applied this replica's view (so it no
/// longer serves the endpoints that moved here, and has published everything
/// it sent them before), or until the deadline, nothing is delivered.
pub(super) struct Fence {
    /// When it is lifted whatever the others said.
    pub(super) deadline: UnixMillis,
    /// 6/CDTP answers (and deadlines) that came while it was up, by request:
    /// their requests stay pending until it is lifted.
    pub(super) answers: BTreeMap<u64, Fetched>,
    /// Pushes wanted while it was up: (slot, incarnation, name).
    pub(super) pushes: Vec<(u32, u32, u32)>,
}

/// How a hand-over fence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FenceEnd {
    /// Every other member confirmed this replica's view.
    Confirmed,
    /// The deadline passed first.
    TimedOut,
}

/// The identifier of a member list (kaa-rs extension): FNV-1a 64 over the
/// sorted, deduplicated replica IDs, each followed by the byte `0xFF`, then the
/// splitmix64 finalizer; 0 for no members. Two replicas with the same list
/// compute the same view; drivers publish the view their engine applied
/// ([`Cmx::membership_view`]) and pass the others' on ([`Cmx::set_member_view`]).
pub fn membership_view<S: AsRef<str>>(members: &[S]) -> u64 {
    let mut ids: Vec<&str> = members.iter().map(AsRef::as_ref).collect();
    if ids.is_empty() {
        return 0;
    }
    ids.sort_unstable();
    ids.dedup();
    let mut state = FNV_OFFSET;
    for id in ids {
        state = fnv1a(fnv1a(state, id.as_bytes()), &[SEPARATOR]);
    }
    mix(state)
}

impl Membership {
    /// Whether a change happened less than `settle` ago with members on.
    pub(super) fn unsettled(&self, now: UnixMillis, settle: std::time::Duration) -> bool {
        !self.members.is_empty()
            && self
                .changed_at
                .is_some_and(|at| now < at.saturating_add(settle))
    }

    /// The member that owns `endpoint_id`; `None` when membership is off.
    pub(super) fn owner(&self, endpoint_id: &str) -> Option<&Member> {
        let bytes = endpoint_id.as_bytes();
        self.members
            .iter()
            .map(|m| (mix(fnv1a(m.prefix, bytes)), &m.id, m))
            .max_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)))
            .map(|(_, _, m)| m)
    }
}

impl Cmx {
    /// Whether this replica serves `endpoint_id`: membership is off (no members
    /// reported, or none), or it is the endpoint's rendezvous owner.
    pub fn owns(&self, endpoint_id: &str) -> bool {
        match self.membership.owner(endpoint_id) {
            None => true,
            Some(m) => *m.id == *self.settings.replica,
        }
    }

    /// The replica that serves `endpoint_id` in this engine's view: its
    /// rendezvous owner among the members, or this replica when membership is
    /// off.
    pub fn owner_of(&self, endpoint_id: &str) -> &str {
        match self.membership.owner(endpoint_id) {
            None => &self.settings.replica,
            Some(m) => &m.id,
        }
    }

    /// The live members of this CMX instance as last reported (sorted; empty
    /// when membership is off).
    pub fn members(&self) -> Vec<&str> {
        self.membership.members.iter().map(|m| &*m.id).collect()
    }

    /// [`Input::Members`]: the live replicas of this CMX instance (kaa-rs
    /// extension), e.g. from a JetStream key-value bucket the replicas keep
    /// their keys in. IDs that are not valid subject tokens are skipped,
    /// duplicates count once, order does not matter. An empty list turns
    /// membership off (this replica serves every endpoint, as a single CMX).
    ///
    /// When the list changes, endpoints this replica no longer owns are
    /// forgotten (devices still waiting on them get a 503 to retry, which
    /// reaches the new owner; CDTP answers still to come for them are
    /// dropped), and if it may have gained endpoints (a member left, or it
    /// joined) it sends an [`Output::SessionsRequest`] and takes over the
    /// sessions it now owns from the answers ([`Cmx::adopt_session`]: a fresh
    /// fetch, and a push of what the device has not reported applied).
    pub fn set_members<S: AsRef<str>>(&mut self, replicas: &[S], now: UnixMillis) {
        let mut ids: Vec<&str> = replicas
            .iter()
            .map(AsRef::as_ref)
            .filter(|r| kaa_ism::subject::validate_token(r, "replica").is_ok())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let old: Vec<Arc<str>> = self
            .membership
            .members
            .iter()
            .map(|m| m.id.clone())
            .collect();
        if old.iter().map(|m| &**m).eq(ids.iter().copied()) {
            return;
        }
        let me = &*self.settings.replica;
        let was_member = old.iter().any(|m| **m == *me);
        let is_member = ids.contains(&me);
        // Rendezvous hashing moves endpoints to this replica only when it
        // joins, when another member leaves, or when membership turns off;
        // never when it served everything already.
        let alone_before = old.is_empty() || (old.len() == 1 && was_member);
        let may_gain = if alone_before {
            false
        } else if ids.is_empty() {
            true
        } else {
            is_member && (!was_member || old.iter().any(|m| !ids.contains(&&**m)))
        };
        let mut members = Vec::with_capacity(ids.len());
        for id in ids {
            let Ok(subject) = kaa_esp::subject::client_data_replica_subject(id) else {
                continue;
            };
            members.push(Member {
                id: id.into(),
                prefix: fnv1a(fnv1a(FNV_OFFSET, id.as_bytes()), &[SEPARATOR]),
                subject: subject.to_string().into(),
            });
        }
        // Joining live members: what they served moves here, and what they
        // sent just before they saw the join may still be on its way: nothing
        // is delivered until they confirm the new view (or the deadline).
        let delay = self.settings.config.handover_delay;
        if is_member
            && !was_member
            && members.len() > 1
            && !delay.is_zero()
            && self.membership.fence.is_none()
        {
            let deadline = now.saturating_add(delay);
            self.membership.fence = Some(Fence {
                deadline,
                answers: BTreeMap::new(),
                pushes: Vec::new(),
            });
            self.stats.handover_fences += 1;
            self.timers.push(Reverse((deadline, Timer::FenceDeadline)));
        }
        self.membership.view = membership_view(&ids_of(&members));
        self.membership.members = members;
        let Membership {
            members, confirmed, ..
        } = &mut self.membership;
        confirmed.retain(|id, _| members.iter().any(|m| m.id == *id));
        self.membership.changes += 1;
        self.membership.changed_at = Some(now);
        self.stats.membership_changes += 1;
        // Forget the endpoints another replica owns now.
        let moved: Vec<u32> = self
            .endpoints
            .slots()
            .filter(|(_, e)| !self.owns(&e.id))
            .map(|(slot, _)| slot)
            .collect();
        for slot in moved {
            self.remove_endpoint(slot, Removal::Moved, now);
        }
        if may_gain {
            self.send_sessions_request(SessionsPurpose::TakeOver, now);
        }
        self.check_fence(now);
    }

    /// This replica's view of the members: [`membership_view`] of the list
    /// the engine applied last (0 with membership off). A driver publishes it
    /// for the other replicas once every output the engine queued before has
    /// reached the bus (e.g. a NATS flush and a round trip), as its
    /// confirmation that it acts on this view; see [`Cmx::set_member_view`].
    pub fn membership_view(&self) -> u64 {
        self.membership.view
    }

    /// [`Input::MemberView`]: replica `replica` confirmed it applied the member
    /// list whose [`membership_view`] is `view`, and that what it sent before
    /// has reached the bus. A replica that joined live members delivers
    /// nothing (no answer, no push) until every other member has confirmed its
    /// view, or [`CmxConfig::handover_delay`] has passed: the member giving
    /// endpoints up may have pushed to them just before it saw the join, and a
    /// newer delivery from here must not overtake that push.
    pub fn set_member_view(&mut self, replica: &str, view: u64, now: UnixMillis) {
        if *replica == *self.settings.replica {
            return;
        }
        let Some(m) = self.membership.members.iter().find(|m| *m.id == *replica) else {
            return;
        };
        let id = m.id.clone();
        self.membership.confirmed.insert(id, view);
        self.check_fence(now);
    }

    /// Whether deliveries wait for the other members' confirmation (see
    /// [`Cmx::set_member_view`]).
    pub fn handover_fenced(&self) -> bool {
        self.membership.fence.is_some()
    }

    /// Lifts the hand-over fence once every other member confirmed this
    /// replica's view, or its deadline passed: the answers that came
    /// meanwhile are handled in request order, then the pushes wanted.
    pub(super) fn check_fence(&mut self, now: UnixMillis) {
        let Some(fence) = &self.membership.fence else {
            return;
        };
        let me = &*self.settings.replica;
        let view = self.membership.view;
        let confirmed = self
            .membership
            .members
            .iter()
            .all(|m| *m.id == *me || self.membership.confirmed.get(&m.id) == Some(&view));
        let end = if confirmed {
            FenceEnd::Confirmed
        } else if now >= fence.deadline {
            FenceEnd::TimedOut
        } else {
            return;
        };
        let Some(fence) = self.membership.fence.take() else {
            return;
        };
        match end {
            FenceEnd::Confirmed => self.stats.handover_fences_confirmed += 1,
            FenceEnd::TimedOut => self.stats.handover_fences_timed_out += 1,
        }
        for (seq, fetched) in fence.answers {
            self.complete(seq, fetched, now);
        }
        for (slot, incarnation, name) in fence.pushes {
            self.retry_push(slot, incarnation, name, now);
        }
    }

    /// `ClientData` about an endpoint another replica owns: handed over to
    /// that replica's subject with the same datum and `replyTo`.
    pub(super) fn hand_over(
        &mut self,
        msg: &ClientData<'_>,
        reply_to: Option<&str>,
        endpoint_id: &str,
        now: UnixMillis,
    ) -> bool {
        let Some(owner) = self.membership.owner(endpoint_id) else {
            return false;
        };
        if *owner.id == *self.settings.replica {
            return false;
        }
        let subject = owner.subject.clone();
        let owner = owner.id.clone();
        self.stats.handed_over += 1;
        self.out.push_back(Output::HandOver(OutgoingHandOver {
            subject,
            reply_to: reply_to.map(Arc::from),
            owner,
            endpoint_id: endpoint_id.into(),
            correlation_id: msg.correlation_id.to_string(),
            timestamp: now,
            datum: Bytes::from(kaa_ism::avro::Encode::to_vec(msg)),
        }));
        true
    }

    /// [`Input::HandedOver`]: `ClientData` on this replica's own subject,
    /// handed over by another replica (or addressed to this one). Never handed
    /// over again (no forwarding loops). If this replica owns the endpoint (or
    /// membership is off) it is served as usual. If not, the views of the
    /// members differ for a moment (a member joined or left and not every
    /// replica has heard yet) and the engine does not take the endpoint's
    /// state, which would put two replicas' CDTP requests in flight for it: a
    /// configuration request is answered 503 (the device retries and reaches
    /// the owner), an applied report is broadcast and answered without
    /// bookkeeping. Counted in [`Stats::handed_over_not_owned`].
    pub fn handle_handed_over(
        &mut self,
        msg: &ClientData<'_>,
        reply_to: Option<&str>,
        now: UnixMillis,
    ) {
        self.stats.handed_over_received += 1;
        let foreign = msg
            .endpoint_id
            .as_deref()
            .is_some_and(|id| !id.is_empty() && !self.owns(id));
        if !foreign {
            return self.serve_client_data(msg, reply_to, now);
        }
        self.stats.handed_over_not_owned += 1;
        self.stats.client_data += 1;
        if msg.is_expired(now) {
            self.stats.client_data_expired += 1;
            return;
        }
        let subject = self.reply_subject(reply_to);
        let r = Reply {
            subject,
            timestamp: msg.timestamp,
            correlation_id: &msg.correlation_id,
            app_version: &msg.app_version_name,
            endpoint_id: msg.endpoint_id.as_deref(),
            resource_path: &msg.resource_path,
            request_id: msg.request_id,
        };
        let applied = ResourcePath::parse(&msg.resource_path)
            .is_ok_and(|p| p.kind() == ResourceKind::Applied);
        if applied {
            // Stateless: the broadcast and the empty answer, no endpoint state.
            let path = ResourcePath::parse(&msg.resource_path).ok();
            let written = path.as_ref().and_then(|p| p.name());
            if let (Some(endpoint_id), Ok(written)) = (
                msg.endpoint_id.as_deref(),
                resolve_name(written, msg.config_name.as_deref()),
            ) {
                return self.applied_report_only(&r, endpoint_id, written, &msg.payload, now);
            }
        }
        self.reply_error(
            &r,
            503,
            RefusalReason::EndpointRemoved,
            "the endpoint is moving between CMX replicas; retry",
            now,
        );
    }
}

/// Why the engine asks for the sessions (the correlation ID says it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionsPurpose {
    /// The bus (re)connected: every listed session the engine owns is adopted.
    BusConnected,
    /// Membership changed and this replica may own endpoints it does not
    /// know: only those are adopted.
    TakeOver,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weight_is_the_documented_function() {
        // FNV-1a 64 of "" is the offset basis; the weight of ("", "") hashes
        // the one separator byte.
        assert_eq!(fnv1a(FNV_OFFSET, b""), FNV_OFFSET);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        let expected = mix(fnv1a(FNV_OFFSET, b"cmx-1\xffep-1"));
        assert_eq!(rendezvous_weight("cmx-1", "ep-1"), expected);
        // Pinned (computed apart, in Python): a change of the function moves
        // every endpoint of a fleet
        // whose replicas run different versions.
        assert_eq!(rendezvous_weight("cmx-1", "ep-1"), 0x5418_0305_8bd3_ea38);
    }

    #[test]
    fn the_cached_prefix_gives_the_same_owner() {
        let m = Membership {
            members: ["a", "b", "c"]
                .iter()
                .map(|id| Member {
                    id: (*id).into(),
                    prefix: fnv1a(fnv1a(FNV_OFFSET, id.as_bytes()), &[SEPARATOR]),
                    subject: "s".into(),
                })
                .collect(),
            changes: 1,
            changed_at: None,
            view: 0,
            confirmed: HashMap::new(),
            fence: None,
        };
        for i in 0..1000 {
            let ep = format!("ep-{i}");
            assert_eq!(
                m.owner(&ep).map(|m| &*m.id),
                rendezvous_owner(&["a", "b", "c"], &ep)
            );
        }
    }
}
