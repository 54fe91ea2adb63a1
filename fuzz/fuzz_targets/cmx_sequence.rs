//! kaa-cmp: the CMX engine driven by a structured sequence of inputs (the
//! `arbitrary` crate): device requests and applied reports, a configuration
//! provider that answers from a store that only moves forward, its answers and
//! `ConfigUpdated` broadcasts delivered late, twice, out of order or not at all,
//! malformed answers and unknown correlation IDs, 9/ELCE events and time.
//!
//! The provider is `kaa_cmp::test_support::FakeProvider`; after every step the
//! engine's outputs are checked against the invariants of
//! `kaa-cmp/src/engine/mod.rs` (module docs) and `kaa-cmp/tests/model.rs`, the
//! shared ones (1, 3, the shape half of 4, 5, 6) with
//! `kaa_cmp::test_support::Invariants`, the ones only this harness can judge
//! (2, and the reply half of 4) here:
//!
//! 1. **Never older after newer**: per endpoint, app version and configuration
//!    name, the configuration IDs sent in `ExtensionData` have non-decreasing
//!    provider creation order (the harness knows the order; the engine does not),
//!    and every one of them is an ID the provider created.
//! 2. **Pushes** (`requestId` null, not an answer to a device message) go only to
//!    endpoints that are connected (the last thing heard of them is a `connected`
//!    event or a message from the device) and whose latest request for that name
//!    did not say `observe: false`; the same configuration is not pushed twice
//!    without a new trigger (connect, app version change, device message): after
//!    any number of updates while offline, a reconnect pushes one configuration.
//! 3. **At most one CDTP request in flight** per endpoint and name (a request is
//!    in flight until its first answer reaches the engine, its deadline passes in
//!    `handle_timeout`, or the endpoint is forgotten).
//! 4. **Responses**: every `ExtensionData` status is 200, 400, 404, 502, 503, 504
//!    or a 4xx/5xx the provider sent; non-2xx ones carry a reason; a 200 on a
//!    configuration resource carries valid 7/CMP JSON; a response echoes the
//!    device message's endpoint, resource path and request ID; each device
//!    message with a request ID gets at most one response, and exactly one once
//!    everything has run out (unless it had expired).
//! 5. **Limits**: tracked endpoints and CDTP requests in flight stay within the
//!    configuration.
//! 6. **Timers**: after `handle_timeout(now)`, `poll_timeout` is `None` or later
//!    than `now`; while a CDTP request is in flight it is `Some`; once nobody
//!    answers and every deadline has passed, nothing is in flight and no timer is
//!    set.
#![no_main]

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use arbitrary::Arbitrary;
use kaa_cdtp::{ConfigResponse as CdtpResponse, ConfigUpdated, Current};
use kaa_cmp::engine::{Cmx, CmxConfig, OutgoingConfigRequest, Output};
use kaa_cmp::message::{AppliedRequest, ConfigRequest, ConfigResponse};
use kaa_cmp::test_support::{
    AbsentForm, FakeProvider, Invariants, check_after_timeout, check_quiet, config_name_of_path,
};
use kaa_elce::{AppVersionUpdatedEvent, ConnectedEvent, DisconnectedEvent, UnregisteredEvent};
use kaa_esp::ClientData;
use kaa_ism::UnixMillis;
use libfuzzer_sys::fuzz_target;

const ENDPOINTS: [&str; 3] = ["ep-0", "ep-1", "ep-2"];
const VERSIONS: [&str; 2] = ["v1", "v2"];
const REPLY: &str = "kaa.v1.replica.kpc-1.esp.ExtensionData";
const CDTP_TIMEOUT_MS: u64 = 500;

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Ep {
    E0,
    E1,
    E2,
}

impl Ep {
    fn id(self) -> &'static str {
        ENDPOINTS[self as usize]
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Av {
    V1,
    V2,
}

impl Av {
    fn name(self) -> &'static str {
        VERSIONS[self as usize]
    }
}

/// How a request names its configuration.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Name {
    /// `/config/json`.
    Default,
    /// `/config/json/default`: the default configuration, named explicitly.
    ExplicitDefault,
    /// `/config/json/net`.
    Net,
}

impl Name {
    /// The canonical name (`None`: the default configuration).
    fn key(self) -> Option<&'static str> {
        match self {
            Name::Default | Name::ExplicitDefault => None,
            Name::Net => Some("net"),
        }
    }

    /// The name as a `ConfigUpdated` spells it (`default` explicitly or not).
    fn spelled(self) -> Option<&'static str> {
        match self {
            Name::Default => None,
            Name::ExplicitDefault => Some("default"),
            Name::Net => Some("net"),
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Name::Default => "",
            Name::ExplicitDefault => "/default",
            Name::Net => "/net",
        }
    }
}

/// 4/ESP `configName` next to the resource path.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum EspName {
    Absent,
    /// The same name as the path.
    Same,
    /// Another, valid name: a 400.
    Other,
}

/// A `configId` a device reports.
#[derive(Arbitrary, Debug, Clone)]
enum Held {
    /// The provider's current configuration.
    Latest,
    /// One the provider created earlier.
    Earlier(u8),
    /// No configuration (`""`).
    Empty,
    /// Anything.
    Other(String),
}

#[derive(Arbitrary, Debug, Clone)]
enum Body {
    Request {
        config_id: Option<Held>,
        observe: Option<bool>,
    },
    Junk(Vec<u8>),
}

/// Resource paths and names that are not (all) valid.
const BAD_PATHS: [&str; 8] = [
    "/config/json/a b",
    "/config/xml",
    "/applied/json/",
    "/config/json/",
    "",
    "/config/json/net/extra",
    "/applied/json/default",
    "/config/json/status",
];
const BAD_NAMES: [Option<&str>; 5] = [None, Some(""), Some("x y"), Some("status"), Some("net")];

/// What goes wrong with a provider answer to a real request (none of these
/// carries an older configuration: a provider's store only moves forward).
#[derive(Arbitrary, Debug, Clone, Copy)]
enum BadAnswer {
    /// An error status (4xx/5xx other than 404, or outside 100..600).
    Status(u16),
    /// "Unchanged" (no ID, no content) whatever the request asked.
    Unchanged,
    /// The current ID without content.
    IdWithoutContent,
    /// Content without an ID.
    ContentWithoutId,
    /// The current ID with content that is not JSON.
    NotJson,
    /// The current ID and content with another content type.
    ContentType,
    /// An answer about another endpoint.
    OtherEndpoint,
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    /// A device asks for a configuration (`/config/json[/<name>]`).
    Request {
        ep: Ep,
        av: Av,
        name: Name,
        esp_name: EspName,
        request_id: Option<u16>,
        body: Body,
        /// How old the message is (ms), and its timeout (0: none).
        age: u8,
        timeout: u8,
        affinity: bool,
    },
    /// A device reports a configuration applied or rejected.
    Applied {
        ep: Ep,
        av: Av,
        name: Name,
        request_id: Option<u16>,
        config: Held,
        success: bool,
    },
    /// A device message with an unusual path, name, endpoint or payload.
    Odd {
        ep: Option<Ep>,
        path: u8,
        name: u8,
        request_id: Option<u16>,
        payload: Vec<u8>,
    },
    /// The provider stores a new configuration and broadcasts `ConfigUpdated`.
    Update {
        ep: Ep,
        av: Av,
        name: Name,
    },
    /// A `ConfigUpdated` with an ID the provider never created.
    ForgedUpdate {
        ep: Ep,
        av: Av,
        name: Name,
        id: String,
    },
    /// The provider answers a CDTP request it received (from its current store);
    /// `keep` leaves the request there too (a redelivered request).
    Answer {
        pick: u8,
        keep: bool,
    },
    /// A provider answer reaches the engine; `keep` delivers it again later.
    DeliverAnswer {
        pick: u8,
        keep: bool,
    },
    /// A `ConfigUpdated` reaches the engine.
    DeliverUpdate {
        pick: u8,
        keep: bool,
    },
    /// A message between the services is lost.
    Lose {
        pick: u8,
        answer: bool,
    },
    /// A malformed answer to a real request reaches the engine.
    BadAnswer {
        pick: u8,
        what: BadAnswer,
    },
    /// An answer with a correlation ID the engine never used.
    Unknown {
        correlation_id: String,
        status: u16,
    },
    Connected {
        endpoints: Vec<(Ep, Av)>,
        age: u8,
    },
    Disconnected {
        ep: Ep,
    },
    AppVersionUpdated {
        ep: Ep,
        av: Av,
        age: u8,
    },
    Unregistered {
        ep: Ep,
    },
    /// Time passes; `fire` calls `handle_timeout` (a late driver does not).
    Advance {
        ms: u16,
        fire: bool,
    },
}

#[derive(Arbitrary, Debug)]
struct Limits {
    max_endpoints: u8,
    max_pending: u8,
    max_waiters: u8,
    push_retry_attempts: u8,
    implicit_applied: bool,
    /// The provider says "no configuration" as ECR does (`configId` `""`,
    /// `null`) rather than 404.
    ecr_absent: bool,
}

#[derive(Arbitrary, Debug)]
struct Scenario {
    limits: Limits,
    ops: Vec<Op>,
}

/// (endpoint, app version, canonical name).
type ConfigKey = (String, String, Option<String>);

fn key(ep: &str, av: &str, name: Option<&str>) -> ConfigKey {
    (ep.to_owned(), av.to_owned(), name.map(str::to_owned))
}

/// The `configId` a device reports, from what the provider created.
fn held(provider: &FakeProvider, ep: &str, av: &str, name: Option<&str>, held: &Held) -> String {
    let created = provider.created();
    match held {
        Held::Latest => provider
            .current(ep, av, name)
            .unwrap_or_default()
            .to_owned(),
        Held::Earlier(n) if !created.is_empty() => created[usize::from(*n) % created.len()].clone(),
        Held::Earlier(_) | Held::Empty => String::new(),
        Held::Other(s) => s.clone(),
    }
}

/// `Known(observe)` of the latest request the engine surely accepted, or
/// `Unknown` when the harness cannot tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Observe {
    Known(Option<bool>),
    Unknown,
}

/// A device message with a request ID, waiting for its response.
struct Asked {
    endpoint_id: Option<String>,
    resource_path: String,
    request_id: i32,
    answered: u32,
    /// Expired before the engine saw it: no response.
    expired: bool,
}

struct Harness {
    cmx: Cmx,
    max_endpoints: usize,
    now: i64,
    /// Answers by kaa-cdtp's rules from a store that only moves forward; IDs
    /// `cfg-<n>` in creation order.
    provider: FakeProvider,
    /// CDTP requests the provider has received and not answered.
    requests: Vec<OutgoingConfigRequest>,
    /// Provider answers on their way to the engine.
    answers: Vec<CdtpResponse<'static>>,
    /// `ConfigUpdated` broadcasts on their way to the engine.
    updates: Vec<ConfigUpdated<'static>>,
    next_message: u64,
    /// Device messages by correlation ID.
    device_messages: HashMap<String, Option<Asked>>,
    // --- invariant state ---
    /// The shared invariants: ordering, requests in flight, response shape
    /// (with the statuses of provider answers fed in), limits, timers.
    inv: Invariants,
    connected: HashMap<&'static str, bool>,
    observe: HashMap<(String, Option<String>), Observe>,
    /// Endpoints that sent a message for a name the harness does not follow:
    /// `observe` of names it has not seen is unknown.
    odd: HashSet<&'static str>,
    last_push: HashMap<ConfigKey, String>,
}

fn now_ms(h: &Harness) -> UnixMillis {
    UnixMillis(h.now)
}

impl Harness {
    fn new(l: &Limits) -> Self {
        let max_endpoints = usize::from(l.max_endpoints % 4);
        let max_pending = 1 + usize::from(l.max_pending % 6);
        let mut config = CmxConfig::new("cmx", "cmx-1", "ecr", "kpc");
        config.max_endpoints = max_endpoints;
        config.max_pending_requests = max_pending;
        config.max_names_per_endpoint = 8;
        config.max_waiters_per_request = 1 + usize::from(l.max_waiters % 3);
        config.cdtp_timeout = Duration::from_millis(CDTP_TIMEOUT_MS);
        config.push_retry_delay = Duration::from_millis(100);
        config.push_retry_attempts = l.push_retry_attempts % 4;
        config.endpoint_ttl = Duration::from_secs(5);
        config.max_config_id_len = 32;
        config.broadcast_implicit_applied = l.implicit_applied;
        let mut provider = FakeProvider::new();
        if l.ecr_absent {
            provider.absent_as(AbsentForm::EmptyId);
        }
        Harness {
            inv: Invariants::new(&config),
            cmx: Cmx::new(config).expect("a valid configuration"),
            max_endpoints,
            now: 1_000_000,
            provider,
            requests: Vec::new(),
            answers: Vec::new(),
            updates: Vec::new(),
            next_message: 0,
            device_messages: HashMap::new(),
            connected: HashMap::new(),
            observe: HashMap::new(),
            odd: HashSet::new(),
            last_push: HashMap::new(),
        }
    }

    /// Forgets what the harness knows about an endpoint's engine state (the
    /// engine forgot the endpoint).
    fn forget(&mut self, ep: &str) {
        self.observe.retain(|(e, _), _| e != ep);
        self.odd.remove(ep);
        self.last_push.retain(|(e, _, _), _| e != ep);
        self.inv.in_flight.forget(ep);
    }

    /// A new trigger for pushes to `ep`: the same configuration may go again.
    fn retrigger(&mut self, ep: &str) {
        self.last_push.retain(|(e, _, _), _| e != ep);
    }

    #[allow(clippy::too_many_arguments)]
    fn client_data(
        &mut self,
        ep: Option<&'static str>,
        av: &str,
        path: String,
        config_name: Option<&str>,
        request_id: Option<i32>,
        payload: Vec<u8>,
        age: i64,
        timeout: i64,
        affinity: bool,
    ) {
        self.next_message += 1;
        let correlation_id = format!("cd-{}", self.next_message);
        let timestamp = self.now - age;
        let expired = timeout > 0 && self.now > timestamp + timeout;
        self.device_messages.insert(
            correlation_id.clone(),
            request_id.map(|request_id| Asked {
                endpoint_id: ep.map(str::to_owned),
                resource_path: path.clone(),
                request_id,
                answered: 0,
                expired,
            }),
        );
        if let Some(ep) = ep
            && !expired
        {
            // A device message: the endpoint has a session (or the message is
            // rejected before the engine tracks it; then no push follows).
            self.connected.insert(ep, true);
            self.retrigger(ep);
        }
        let cd = ClientData {
            correlation_id: correlation_id.into(),
            timestamp,
            timeout,
            app_version_name: av.to_owned().into(),
            endpoint_id: ep.map(Into::into),
            resource_path: path.into(),
            request_id,
            payload: payload.into(),
            config_name: config_name.map(|n| n.to_owned().into()),
        };
        let reply = affinity.then_some(REPLY);
        self.cmx.handle_client_data(&cd, reply, now_ms(self));
    }

    fn step(&mut self, op: &Op) {
        let mut multi_connect: Vec<&'static str> = Vec::new();
        match op {
            Op::Request {
                ep,
                av,
                name,
                esp_name,
                request_id,
                body,
                age,
                timeout,
                affinity,
            } => {
                let (payload, parsed) = match body {
                    Body::Request { config_id, observe } => {
                        let config_id = config_id
                            .as_ref()
                            .map(|h| held(&self.provider, ep.id(), av.name(), name.key(), h));
                        let json = ConfigRequest {
                            config_id: config_id.clone().map(Cow::Owned),
                            observe: *observe,
                        }
                        .to_json();
                        (json, Some((config_id, *observe)))
                    }
                    Body::Junk(bytes) => {
                        let parsed = ConfigRequest::from_json(bytes)
                            .ok()
                            .map(|r| (r.config_id.map(|c| c.into_owned()), r.observe));
                        (bytes.clone(), parsed)
                    }
                };
                let (esp, name_ok) = match esp_name {
                    EspName::Absent => (None, true),
                    EspName::Same => (Some(name.key().unwrap_or("default")), true),
                    EspName::Other => (Some("other"), false),
                };
                let age = i64::from(*age);
                let timeout = i64::from(*timeout % 4) * 100;
                let expired = timeout > 0 && age > timeout;
                // What the engine surely does with `observe`.
                if !expired && name_ok {
                    let slot = (ep.id().to_owned(), name.key().map(str::to_owned));
                    match parsed {
                        Some((config_id, observe))
                            if config_id.as_ref().is_none_or(|c| c.len() <= 32) =>
                        {
                            let o = if self.max_endpoints == 0 {
                                Observe::Unknown
                            } else {
                                Observe::Known(observe)
                            };
                            self.observe.insert(slot, o);
                        }
                        _ => {}
                    }
                }
                let path = format!("/config/json{}", name.suffix());
                self.client_data(
                    Some(ep.id()),
                    av.name(),
                    path,
                    esp,
                    request_id.map(i32::from),
                    payload,
                    age,
                    timeout,
                    *affinity,
                );
            }
            Op::Applied {
                ep,
                av,
                name,
                request_id,
                config,
                success,
            } => {
                let id = held(&self.provider, ep.id(), av.name(), name.key(), config);
                let report = if *success {
                    AppliedRequest::applied(id)
                } else {
                    AppliedRequest::rejected(id, 500, "cannot apply")
                };
                let path = format!("/applied/json{}", name.suffix());
                self.client_data(
                    Some(ep.id()),
                    av.name(),
                    path,
                    None,
                    request_id.map(i32::from),
                    report.to_json(),
                    0,
                    0,
                    true,
                );
            }
            Op::Odd {
                ep,
                path,
                name,
                request_id,
                payload,
            } => {
                let ep = ep.map(Ep::id);
                if let Some(ep) = ep {
                    // Might be a configuration request the engine accepts.
                    for (slot, o) in self.observe.iter_mut() {
                        if slot.0 == ep {
                            *o = Observe::Unknown;
                        }
                    }
                    self.odd.insert(ep);
                }
                let path = BAD_PATHS[usize::from(*path) % BAD_PATHS.len()];
                let name = BAD_NAMES[usize::from(*name) % BAD_NAMES.len()];
                self.client_data(
                    ep,
                    "v1",
                    path.to_owned(),
                    name,
                    request_id.map(i32::from),
                    payload.clone(),
                    0,
                    0,
                    false,
                );
            }
            Op::Update { ep, av, name } => {
                // The name as the request spelled it; the store keys it canonically.
                let content = format!("{{\"at\":{}}}", self.now);
                let mut u = self
                    .provider
                    .set(ep.id(), av.name(), name.spelled(), content);
                u.timestamp = self.now;
                self.updates.push(u);
            }
            Op::ForgedUpdate { ep, av, name, id } => {
                self.updates
                    .push(forged(*ep, *av, *name, id.clone(), self.now));
            }
            Op::Answer { pick, keep } => {
                if !self.requests.is_empty() {
                    let i = usize::from(*pick) % self.requests.len();
                    let r = if *keep {
                        self.requests[i].clone()
                    } else {
                        self.requests.swap_remove(i)
                    };
                    let a = self.provider.answer(&r.message(), now_ms(self));
                    self.answers.push(a);
                }
            }
            Op::DeliverAnswer { pick, keep } => {
                if !self.answers.is_empty() {
                    let i = usize::from(*pick) % self.answers.len();
                    let a = if *keep {
                        self.answers[i].clone()
                    } else {
                        self.answers.swap_remove(i)
                    };
                    self.deliver_answer(&a);
                }
            }
            Op::DeliverUpdate { pick, keep } => {
                if !self.updates.is_empty() {
                    let i = usize::from(*pick) % self.updates.len();
                    let u = if *keep {
                        self.updates[i].clone()
                    } else {
                        self.updates.swap_remove(i)
                    };
                    self.cmx.handle_config_updated(&u, now_ms(self));
                }
            }
            Op::Lose { pick, answer } => {
                let bag = if *answer {
                    self.answers.len()
                } else {
                    self.requests.len()
                };
                if bag > 0 {
                    let i = usize::from(*pick) % bag;
                    if *answer {
                        self.answers.swap_remove(i);
                    } else {
                        self.requests.swap_remove(i);
                    }
                }
            }
            Op::BadAnswer { pick, what } => {
                if !self.requests.is_empty() {
                    let i = usize::from(*pick) % self.requests.len();
                    let r = self.requests[i].clone();
                    let a = self.bad_answer(&r, *what);
                    self.deliver_answer(&a);
                }
            }
            Op::Unknown {
                correlation_id,
                status,
            } => {
                let asked = kaa_cdtp::ConfigRequest {
                    correlation_id: format!("x{correlation_id}").into(),
                    app_version_name: "v1".into(),
                    endpoint_id: "ep-0".into(),
                    ..Default::default()
                };
                let current = Current::Config {
                    config_id: "cfg-999999",
                    content: b"{}",
                };
                let mut a = CdtpResponse::current(&asked, current, self.now);
                a.status_code = i32::from(*status);
                a.reason_phrase = None;
                self.cmx.handle_config_response(&a, now_ms(self));
                // An ID one past the last the engine issued, and one never issued.
                for seq in [u64::MAX, 0] {
                    let mut a = a.clone();
                    a.correlation_id = format!("cmx-1-{seq}").into();
                    self.cmx.handle_config_response(&a, now_ms(self));
                }
            }
            Op::Connected { endpoints, age } => {
                let endpoints: Vec<_> = endpoints
                    .iter()
                    .take(4)
                    .map(|(ep, av)| (Cow::Borrowed(ep.id()), Cow::Borrowed(av.name())))
                    .collect();
                for (ep, _) in &endpoints {
                    let ep = ENDPOINTS
                        .into_iter()
                        .find(|e| e == ep)
                        .expect("a known endpoint");
                    self.connected.insert(ep, true);
                    self.retrigger(ep);
                    multi_connect.push(ep);
                }
                let e = ConnectedEvent {
                    timestamp: self.now - i64::from(*age),
                    endpoints,
                    originator_replica_id: "kpc-1".into(),
                    ..Default::default()
                };
                self.cmx.handle_connected(&e, now_ms(self));
            }
            Op::Disconnected { ep } => {
                self.connected.insert(ep.id(), false);
                let e = DisconnectedEvent {
                    timestamp: self.now,
                    endpoints: vec![(ep.id().into(), "v1".into())],
                    originator_replica_id: "kpc-1".into(),
                    ..Default::default()
                };
                self.cmx.handle_disconnected(&e, now_ms(self));
            }
            Op::AppVersionUpdated { ep, av, age } => {
                self.retrigger(ep.id());
                let e = AppVersionUpdatedEvent {
                    timestamp: self.now - i64::from(*age),
                    app_version_name: av.name().into(),
                    previous_app_version_name: "v1".into(),
                    endpoint_id: ep.id().into(),
                    originator_replica_id: "epr-1".into(),
                    ..Default::default()
                };
                self.cmx.handle_app_version_updated(&e, now_ms(self));
            }
            Op::Unregistered { ep } => {
                self.connected.insert(ep.id(), false);
                self.forget(ep.id());
                let e = UnregisteredEvent {
                    timestamp: self.now,
                    endpoint_id: ep.id().into(),
                    originator_replica_id: "epr-1".into(),
                    ..Default::default()
                };
                self.cmx.handle_unregistered(&e, now_ms(self));
            }
            Op::Advance { ms, fire } => {
                self.now += i64::from(*ms);
                if *fire {
                    self.fire();
                }
            }
        }
        let removed = self.inv.forgetting(&self.cmx);
        self.drain(removed);
        if removed {
            // The engine forgot endpoints (evicted, expired): forget what the
            // harness knew of them. An endpoint of a `connected` event may have
            // been evicted and tracked again within the step.
            for ep in ENDPOINTS {
                if self.cmx.endpoint(ep).is_none() {
                    self.forget(ep);
                } else if multi_connect.contains(&ep) {
                    for (slot, o) in self.observe.iter_mut() {
                        if slot.0 == ep {
                            *o = Observe::Unknown;
                        }
                    }
                    self.odd.insert(ep);
                    // Its requests in flight may have ended with the eviction,
                    // and new ones may have been sent: the harness cannot tell.
                    self.inv.in_flight.forget(ep);
                }
            }
        }
        self.inv
            .check_limits(&mut self.cmx)
            .unwrap_or_else(|v| panic!("{v}"));
    }

    fn fire(&mut self) {
        let now = now_ms(self);
        self.inv.timeout(now);
        self.cmx.handle_timeout(now);
        check_after_timeout(&mut self.cmx, now).unwrap_or_else(|v| panic!("{v}"));
    }

    fn deliver_answer(&mut self, a: &CdtpResponse<'_>) {
        self.inv.answer_delivered(a);
        self.cmx.handle_config_response(a, now_ms(self));
    }

    fn bad_answer(&mut self, r: &OutgoingConfigRequest, what: BadAnswer) -> CdtpResponse<'static> {
        let mut a = self.provider.answer(&r.message(), now_ms(self));
        let current = match self.provider.get(
            &r.endpoint_id,
            &r.app_version_name,
            r.config_name.as_deref(),
        ) {
            Current::Config { config_id, content } => {
                Some((config_id.to_owned(), content.to_vec()))
            }
            Current::Absent => None,
        };
        match what {
            BadAnswer::Status(s) => {
                let s = i32::from(s);
                a.status_code = if s == 404 || (200..300).contains(&s) {
                    500
                } else {
                    s
                };
                a.reason_phrase = (s % 2 == 0).then(|| "provider failure".into());
                a.config_id = None;
                a.content = None;
            }
            BadAnswer::Unchanged => {
                a.status_code = 200;
                a.config_id = None;
                a.content = None;
            }
            BadAnswer::IdWithoutContent => {
                a.status_code = 200;
                a.config_id = Some(current.map_or_else(|| "cfg-0".into(), |(id, _)| id).into());
                a.content = None;
            }
            BadAnswer::ContentWithoutId => {
                a.status_code = 200;
                a.config_id = None;
                a.content = Some(Cow::Borrowed(&b"{}"[..]));
            }
            BadAnswer::NotJson | BadAnswer::ContentType => {
                let Some((id, content)) = current else {
                    return a;
                };
                a.status_code = 200;
                a.content = Some(content.into());
                a.config_id = Some(id.into());
                if matches!(what, BadAnswer::NotJson) {
                    a.content = Some(Cow::Borrowed(&b"{\"a\":"[..]));
                } else {
                    a.content_type = "text/plain".into();
                }
            }
            BadAnswer::OtherEndpoint => a.endpoint_id = "ep-other".into(),
        }
        a
    }

    /// Takes the engine's outputs and checks them.
    fn drain(&mut self, removed: bool) {
        while let Some(out) = self.cmx.poll_output() {
            let _ = out.to_datum();
            match out {
                Output::ConfigRequest(r) => self.check_request(r, removed),
                Output::ExtensionData(m) => self.check_extension_data(&m),
                Output::ConfigApplied(_) => {}
                other => panic!("unexpected output {other:?}"),
            }
        }
    }

    fn check_request(&mut self, r: OutgoingConfigRequest, removed: bool) {
        self.inv
            .check_request(&r, removed)
            .unwrap_or_else(|v| panic!("{v}"));
        self.requests.push(r);
    }

    fn check_extension_data(&mut self, m: &kaa_cmp::engine::OutgoingExtensionData) {
        // Invariants 1 and 4 (shape): kaa_cmp::test_support.
        let config = self
            .inv
            .check_extension_data(m, &self.provider)
            .unwrap_or_else(|v| panic!("{v}"));
        let status = m.status_code;
        let name = config_name_of_path(&m.resource_path);
        // A response to a device message, or a push?
        let answer = self.device_messages.get_mut(&m.correlation_id);
        let is_push = answer.is_none();
        match answer {
            Some(Some(asked)) => {
                assert!(!asked.expired, "a response to an expired message: {m:?}");
                asked.answered += 1;
                assert_eq!(asked.answered, 1, "two responses to one message: {m:?}");
                assert_eq!(m.request_id, Some(asked.request_id));
                assert_eq!(*m.resource_path, *asked.resource_path);
                if let Some(ep) = &asked.endpoint_id {
                    assert_eq!(m.endpoint_id.as_deref(), Some(ep.as_str()));
                }
            }
            Some(None) => {
                // A message without a request ID gets no response, only its
                // configuration (as a push would).
                assert_eq!(m.request_id, None);
                assert_eq!(status, 200, "an error for a message without a request ID");
            }
            None => {
                assert_eq!(m.request_id, None, "a response nobody asked for: {m:?}");
                assert_eq!(status, 200, "an error push: {m:?}");
            }
        }
        let Some(name) = name else {
            return;
        };
        let ep = m
            .endpoint_id
            .as_deref()
            .and_then(|e| ENDPOINTS.into_iter().find(|x| *x == e));
        if is_push {
            let ep = ep.expect("a push to a known endpoint");
            assert!(
                self.connected.get(ep).copied().unwrap_or(false),
                "a push to {ep}, which is not connected: {m:?}"
            );
            let slot = (ep.to_owned(), name.map(str::to_owned));
            let observe = self
                .observe
                .get(&slot)
                .copied()
                .unwrap_or(if self.odd.contains(ep) {
                    Observe::Unknown
                } else {
                    Observe::Known(None)
                });
            assert_ne!(
                observe,
                Observe::Known(Some(false)),
                "a push to {ep} after observe: false: {m:?}"
            );
        }
        let (Some(ep), Some(ConfigResponse::Config { config_id, .. })) = (ep, config) else {
            return;
        };
        if is_push {
            let key = key(ep, &m.app_version_name, name);
            let previous = self.last_push.insert(key.clone(), config_id.clone());
            assert_ne!(
                previous.as_deref(),
                Some(config_id.as_str()),
                "{config_id} pushed twice to {key:?} without a new trigger"
            );
        }
    }

    /// Nobody answers any more: everything in flight ends.
    fn finish(&mut self) {
        for _ in 0..16 {
            self.now += 1_000_000;
            self.fire();
            self.drain(false);
        }
        check_quiet(&mut self.cmx).unwrap_or_else(|v| panic!("{v}"));
        for (correlation_id, asked) in &self.device_messages {
            if let Some(a) = asked {
                assert!(
                    a.expired || a.answered == 1,
                    "{correlation_id} (request {}) got no response",
                    a.request_id
                );
            }
        }
    }
}

/// A `ConfigUpdated` with an ID the provider never created, in the bare form
/// (no originator, the schema's default content type).
fn forged(ep: Ep, av: Av, name: Name, id: String, now: i64) -> ConfigUpdated<'static> {
    ConfigUpdated {
        correlation_id: format!("upd-{id}").into(),
        timestamp: now,
        app_version_name: av.name().into(),
        endpoint_id: ep.id().into(),
        content: format!("{{\"id\":\"{id}\"}}").into_bytes().into(),
        config_id: id.into(),
        config_name: name.spelled().map(Into::into),
        ..Default::default()
    }
}

fuzz_target!(|s: Scenario| {
    let mut h = Harness::new(&s.limits);
    for op in s.ops.iter().take(256) {
        if std::env::var_os("CMX_SEQUENCE_TRACE").is_some() {
            eprintln!("{op:?}");
        }
        h.step(op);
    }
    h.finish();
});
