//! Fuzzing mode for a CMX: long runs of generated sequences (device requests with
//! valid, boundary and malformed payloads, applied and rejected reports,
//! configuration changes, connects and disconnects, a provider that answers,
//! fails, says "no configuration" or stays silent, pauses that let the bus
//! reorder) against the CMX under test, checking after each sequence what a
//! conformant CMX must never do. Sequences come from [proptest](mod@proptest) strategies on a
//! seeded ChaCha generator, so a run is reproduced by its seed, and a failing
//! sequence is shrunk to a short one by proptest's shrinking.
//!
//! **Lanes.** A generated case is up to [`FuzzOptions::lanes`] sequences, each on
//! endpoints of its own, run at the same time and checked together after one
//! settle. The settle (the CMX silent for [`FuzzOptions::settle`]) and the pauses
//! are then paid once per case instead of once per sequence, which is what makes
//! runs of millions of steps take an hour rather than a day; and the CMX sees the
//! lanes' messages interleaved as a loaded bus delivers them. The invariants are
//! per endpoint, so lanes cannot break each other's: a failing case shrinks to the
//! lane that broke one (the others are dropped by shrinking), which
//! [`replay_cmx_sequence`] replays alone.
//!
//! The invariants, checked on what the kit's communication service and provider
//! saw (black box; timestamps are the CMX's own):
//!
//! 1. every device request with a request ID is answered exactly once, within
//!    the CMX's 6/CDTP timeout of its last wait (the kit waits that long after a
//!    sequence in which its provider stayed silent), and no answer names a request
//!    ID that was not sent (4/ESP, 1/KP);
//! 2. a 200 on a configuration resource carries a 7/CMP response: `{}` or
//!    `configId` and `config` as a pair, the ID one the provider issued for that
//!    endpoint and name, or `""` with `null` (7/CMP);
//! 3. an error (status 400 or more) carries a reason phrase (1/KP, 4/ESP);
//! 4. never an older configuration after a newer one, per endpoint and name, in
//!    the CMX's own order (its `timestamp`s; messages of the same millisecond are
//!    not compared) (kaa-notes; 7/CMP "latest configuration");
//! 5. no push on a configuration name after the CMX answered an `observe: false`
//!    request for it and before the next request (7/CMP: MUST NOT);
//! 6. (kaa-rs extension, skipped with `skip_extensions`) at most one 6/CDTP
//!    request in flight per endpoint and name: no request while an earlier one
//!    the provider left unanswered is within its timeout.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kaa_bus::{Bus, BusError};
use kaa_ism::avro::Encode;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use serde_json::{Value, json};

use crate::cmx::{Answer, CmxTarget, Delivered, Harness, SuiteOptions};

/// How the fuzzing mode runs.
#[derive(Debug, Clone)]
pub struct FuzzOptions {
    /// The seed: the same seed generates the same sequences.
    pub seed: u64,
    /// How many cases to run (each up to [`lanes`](Self::lanes) sequences).
    pub sequences: u32,
    /// The longest sequence.
    pub max_actions: usize,
    /// How many endpoints a sequence uses.
    pub endpoints: u8,
    /// The most sequences a case runs at the same time, each on endpoints of its
    /// own (at least 1; 1 runs one sequence at a time).
    pub lanes: usize,
    /// How many shrinking steps a failure may take.
    pub max_shrink_iters: u32,
    /// Skip the invariants that check kaa-rs extensions.
    pub skip_extensions: bool,
    /// How long the CMX must be silent before a sequence is checked (at least
    /// its 6/CDTP timeout is added when the provider was silent).
    pub settle: Duration,
    /// How much longer than the CMX's 6/CDTP timeout (plus `settle`) the kit
    /// waits for the answers to a sequence's requests before it calls one
    /// missing (room for a loaded machine).
    pub grace: Duration,
}

impl Default for FuzzOptions {
    fn default() -> Self {
        FuzzOptions {
            seed: 1,
            sequences: 100,
            max_actions: 30,
            endpoints: 3,
            lanes: 1,
            max_shrink_iters: 200,
            skip_extensions: false,
            settle: Duration::from_millis(300),
            grace: Duration::from_secs(5),
        }
    }
}

/// One step of a sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A configuration request on the default (`name: false`) or `network`
    /// configuration.
    Request {
        /// Which endpoint.
        endpoint: u8,
        /// The `network` configuration rather than the default.
        named: bool,
        /// With a request ID.
        with_request_id: bool,
        /// What the payload says.
        payload: RequestPayload,
    },
    /// An applied report: the last configuration delivered, or a rejection of it.
    Applied {
        /// Which endpoint.
        endpoint: u8,
        /// The `network` configuration.
        named: bool,
        /// Reject (status 400 with a reason) rather than apply.
        reject: bool,
    },
    /// The provider's configuration changes and `ConfigUpdated` is announced.
    Update {
        /// Which endpoint.
        endpoint: u8,
        /// The `network` configuration.
        named: bool,
    },
    /// How the provider answers from now on.
    Provider {
        /// Which endpoint.
        endpoint: u8,
        /// The `network` configuration.
        named: bool,
        /// The behaviour.
        mode: ProviderMode,
    },
    /// 9/ELCE `connected`.
    Connect {
        /// Which endpoint.
        endpoint: u8,
    },
    /// 9/ELCE `disconnected`.
    Disconnect {
        /// Which endpoint.
        endpoint: u8,
    },
    /// Wait a little (lets answers and events interleave differently).
    Pause {
        /// Milliseconds.
        ms: u8,
    },
}

/// The payload of a generated configuration request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestPayload {
    /// `{"observe": true}`.
    ObserveOn,
    /// `{"observe": false}`.
    ObserveOff,
    /// `{}`.
    Empty,
    /// `{"configId": <the last one delivered>}`.
    Held,
    /// `{"configId": "never-issued"}`.
    Unknown,
    /// Not JSON.
    Garbage,
    /// JSON that is not a 7/CMP request (`{"observe": "yes", "x": 1}`).
    WrongShape,
}

/// A provider behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderMode {
    /// Answers with the current configuration.
    Normal,
    /// Answers 500 with a reason.
    Error,
    /// Answers "no configuration".
    Absent,
    /// Never answers.
    Silent,
}

fn action(endpoints: u8) -> impl Strategy<Value = Action> {
    let ep = 0..endpoints;
    let payload = prop_oneof![
        3 => Just(RequestPayload::ObserveOn),
        1 => Just(RequestPayload::ObserveOff),
        1 => Just(RequestPayload::Empty),
        2 => Just(RequestPayload::Held),
        1 => Just(RequestPayload::Unknown),
        1 => Just(RequestPayload::Garbage),
        1 => Just(RequestPayload::WrongShape),
    ];
    let mode = prop_oneof![
        4 => Just(ProviderMode::Normal),
        1 => Just(ProviderMode::Error),
        1 => Just(ProviderMode::Absent),
        1 => Just(ProviderMode::Silent),
    ];
    prop_oneof![
        6 => (ep.clone(), any::<bool>(), prop::bool::weighted(0.8), payload).prop_map(
            |(endpoint, named, with_request_id, payload)| Action::Request {
                endpoint,
                named,
                with_request_id,
                payload
            }
        ),
        3 => (ep.clone(), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(endpoint, named, reject)| Action::Applied { endpoint, named, reject }),
        4 => (ep.clone(), any::<bool>()).prop_map(|(endpoint, named)| Action::Update { endpoint, named }),
        1 => (ep.clone(), any::<bool>(), mode)
            .prop_map(|(endpoint, named, mode)| Action::Provider { endpoint, named, mode }),
        2 => ep.clone().prop_map(|endpoint| Action::Connect { endpoint }),
        1 => ep.prop_map(|endpoint| Action::Disconnect { endpoint }),
        2 => (0u8..30).prop_map(|ms| Action::Pause { ms }),
    ]
}

/// The outcome of a fuzzing run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FuzzOutcome {
    /// Every sequence kept every invariant.
    Passed {
        /// Cases run.
        sequences: u32,
        /// Actions run in all (the steps of every lane of every case).
        steps: u64,
    },
    /// A sequence broke an invariant: the shrunk sequence and what broke.
    Failed {
        /// The violated invariant, with the messages that show it.
        reason: String,
        /// The shortest failing sequence proptest found (the lane that broke the
        /// invariant; [`replay_cmx_sequence`] replays it).
        sequence: Vec<Action>,
        /// The lanes that still ran beside it after shrinking (empty when the
        /// failure needs none of them, as it does unless it depends on load).
        beside: Vec<Vec<Action>>,
    },
}

/// Runs `options.sequences` generated cases against the CMX named in `target`,
/// calling `progress` with the number of steps after each case run (shrinking
/// runs count too). Blocks: call it from a blocking thread
/// (`tokio::task::spawn_blocking`) with a handle to the runtime the bus lives on.
pub fn run_cmx_fuzz(
    runtime: tokio::runtime::Handle,
    bus: Arc<dyn Bus>,
    target: &CmxTarget,
    options: &FuzzOptions,
    progress: impl Fn(u64) + Sync,
) -> Result<FuzzOutcome, BusError> {
    let suite = SuiteOptions {
        skip_extensions: options.skip_extensions,
        quiet: options.settle,
        ..SuiteOptions::default()
    };
    let harness = runtime.block_on(Harness::start(bus, target, &suite))?;
    let harness = Mutex::new(harness);
    let config = Config {
        cases: options.sequences,
        max_shrink_iters: options.max_shrink_iters,
        failure_persistence: None,
        ..Config::default()
    };
    let mut seed = [0u8; 32];
    for (i, chunk) in seed.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&options.seed.wrapping_add(i as u64).to_le_bytes());
    }
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let sequence = prop::collection::vec(action(options.endpoints.max(1)), 1..=options.max_actions);
    let strategy = prop::collection::vec(sequence, 1..=options.lanes.max(1));
    let steps = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&strategy, |lanes| {
        let mut h = harness
            .lock()
            .map_err(|_| TestCaseError::fail("the harness lock was poisoned"))?;
        let outcome = runtime.block_on(run_lanes(&mut h, &lanes, options));
        let n = lanes.iter().map(|l| l.len() as u64).sum();
        steps.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        progress(n);
        outcome.map_err(|(lane, reason)| TestCaseError::fail(format!("lane {lane}: {reason}")))
    });
    Ok(match result {
        Ok(()) => FuzzOutcome::Passed {
            sequences: options.sequences,
            steps: steps.into_inner(),
        },
        Err(TestError::Fail(reason, mut lanes)) => {
            // The message names the failing lane of the shrunk case.
            let message = reason.message();
            let lane = message
                .strip_prefix("lane ")
                .and_then(|rest| rest.split_once(':'))
                .and_then(|(n, _)| n.parse::<usize>().ok())
                .filter(|&n| n < lanes.len())
                .unwrap_or(0);
            let sequence = if lanes.is_empty() {
                Vec::new()
            } else {
                lanes.remove(lane)
            };
            FuzzOutcome::Failed {
                reason: message.to_owned(),
                sequence,
                beside: lanes,
            }
        }
        Err(TestError::Abort(reason)) => FuzzOutcome::Failed {
            reason: format!("aborted: {}", reason.message()),
            sequence: Vec::new(),
            beside: Vec::new(),
        },
    })
}

/// Runs one given sequence against the CMX named in `target` and checks it, as
/// [`run_cmx_fuzz`] does for generated ones: for replaying a shrunk failure
/// (e.g. after a fix) or for a regression test. `Err` says which invariant broke.
pub async fn replay_cmx_sequence(
    bus: Arc<dyn Bus>,
    target: &CmxTarget,
    options: &FuzzOptions,
    actions: &[Action],
) -> Result<Result<(), String>, BusError> {
    let suite = SuiteOptions {
        skip_extensions: options.skip_extensions,
        quiet: options.settle,
        ..SuiteOptions::default()
    };
    let mut h = Harness::start(bus, target, &suite).await?;
    Ok(run_lanes(&mut h, &[actions.to_vec()], options)
        .await
        .map_err(|(_, reason)| reason))
}

/// What the kit did for one endpoint and name during a sequence.
#[derive(Default)]
struct Track {
    /// The provider's current version (0: never set, absent).
    version: u32,
    /// Every config ID the provider issued.
    issued: HashSet<String>,
    /// The last config ID delivered to the device (what "held" sends).
    held: Option<String>,
}

fn key(endpoint: &str, named: bool) -> (String, bool) {
    (endpoint.to_owned(), named)
}

fn config_path(named: bool) -> &'static str {
    if named {
        "/config/json/network"
    } else {
        "/config/json"
    }
}

fn applied_path(named: bool) -> &'static str {
    if named {
        "/applied/json/network"
    } else {
        "/applied/json"
    }
}

/// What one lane of a case did and saw.
#[derive(Default)]
struct Lane {
    endpoints: Vec<String>,
    tracks: HashMap<(String, bool), Track>,
    /// (endpoint, request ID) → whether it was on the named configuration and
    /// asked `observe: false`.
    sent: HashMap<(String, i32), (bool, bool)>,
    /// Every configuration request in the order sent: (endpoint, named, request ID).
    order: Vec<(String, bool, Option<i32>)>,
    delivered: Vec<Delivered>,
    silent_used: bool,
}

impl Lane {
    fn endpoint(&self, index: u8) -> String {
        self.endpoints[usize::from(index) % self.endpoints.len()].clone()
    }

    fn deliver(&mut self, d: Delivered) {
        note_delivery(&mut self.tracks, &d);
        self.delivered.push(d);
    }

    /// Whether a request with a request ID has no answer yet.
    fn outstanding(&self) -> bool {
        let answered: HashSet<(&str, i32)> = self
            .delivered
            .iter()
            .filter_map(|d| Some((d.endpoint_id.as_str(), d.request_id?)))
            .collect();
        self.sent
            .keys()
            .any(|(ep, id)| !answered.contains(&(ep.as_str(), *id)))
    }
}

/// The lanes' state during a case, shared by the lanes' futures and the
/// collector on one task (a `RefCell`, never borrowed across an await).
struct Lanes {
    lanes: Vec<Lane>,
    /// Endpoint ID → its lane.
    owner: HashMap<String, usize>,
}

impl Lanes {
    fn route(&mut self, d: Delivered) -> bool {
        // Late answers for an earlier case's endpoints are not this one's.
        match self.owner.get(&d.endpoint_id) {
            Some(&lane) => {
                self.lanes[lane].deliver(d);
                true
            }
            None => false,
        }
    }
}

/// Runs the actions of one lane; `state` holds what every lane saw so far.
async fn run_lane(
    h: &Harness,
    state: &RefCell<Lanes>,
    lane: usize,
    actions: &[Action],
) -> Result<(), String> {
    let mut next_request_id = 0i32;
    for a in actions {
        match *a {
            Action::Request {
                endpoint,
                named,
                with_request_id,
                payload,
            } => {
                let datum = {
                    let mut s = state.borrow_mut();
                    let l = &mut s.lanes[lane];
                    let ep = l.endpoint(endpoint);
                    let request_id = with_request_id.then(|| {
                        next_request_id += 1;
                        next_request_id
                    });
                    let held = l.tracks.get(&key(&ep, named)).and_then(|t| t.held.clone());
                    let body: Vec<u8> = match payload {
                        RequestPayload::ObserveOn => br#"{"observe":true}"#.to_vec(),
                        RequestPayload::ObserveOff => br#"{"observe":false}"#.to_vec(),
                        RequestPayload::Empty => b"{}".to_vec(),
                        RequestPayload::Held => match held {
                            Some(id) => json!({"configId": id}).to_string().into_bytes(),
                            None => b"{}".to_vec(),
                        },
                        RequestPayload::Unknown => br#"{"configId":"never-issued"}"#.to_vec(),
                        RequestPayload::Garbage => b"{\"observe\":tru".to_vec(),
                        RequestPayload::WrongShape => br#"{"observe":"yes","x":1}"#.to_vec(),
                    };
                    l.order.push((ep.clone(), named, request_id));
                    if let Some(id) = request_id {
                        l.sent.insert(
                            (ep.clone(), id),
                            (named, payload == RequestPayload::ObserveOff),
                        );
                    }
                    h.client_data(&ep, config_path(named), request_id, &body)
                        .to_vec()
                };
                h.send_datum(datum).await?;
            }
            Action::Applied {
                endpoint,
                named,
                reject,
            } => {
                let (ep, held) = {
                    let s = state.borrow();
                    let l = &s.lanes[lane];
                    let ep = l.endpoint(endpoint);
                    let held = l.tracks.get(&key(&ep, named)).and_then(|t| t.held.clone());
                    (ep, held)
                };
                let Some(id) = held else {
                    continue;
                };
                let body = if reject {
                    json!({"configId": id, "statusCode": 400, "reasonPhrase": "rejected by the fuzzer"})
                } else {
                    json!({"configId": id})
                };
                h.send(&ep, applied_path(named), None, &body).await?;
            }
            Action::Update { endpoint, named } => {
                let (ep, id, v) = {
                    let mut s = state.borrow_mut();
                    let l = &mut s.lanes[lane];
                    let ep = l.endpoint(endpoint);
                    let t = l.tracks.entry(key(&ep, named)).or_default();
                    t.version += 1;
                    let id = format!("{ep}-{}-v{}", u8::from(named), t.version);
                    t.issued.insert(id.clone());
                    (ep, id, t.version)
                };
                h.update(&ep, named.then_some("network"), &id, &json!({"v": v}))
                    .await?;
            }
            Action::Provider {
                endpoint,
                named,
                mode,
            } => {
                let mut s = state.borrow_mut();
                let l = &mut s.lanes[lane];
                let ep = l.endpoint(endpoint);
                let version = l.tracks.entry(key(&ep, named)).or_default().version;
                let answer = match mode {
                    ProviderMode::Normal => Answer::Config {
                        id: format!("{ep}-{}-v{version}", u8::from(named)),
                        content: json!({"v": version}).to_string(),
                    },
                    ProviderMode::Error => Answer::Error {
                        status: 500,
                        reason: "the fuzzer's provider fails".into(),
                    },
                    ProviderMode::Absent => Answer::Absent,
                    ProviderMode::Silent => {
                        l.silent_used = true;
                        Answer::Silent
                    }
                };
                h.set(&ep, named.then_some("network"), answer);
            }
            Action::Connect { endpoint } => {
                let ep = state.borrow().lanes[lane].endpoint(endpoint);
                h.connectivity(&ep, true).await?;
            }
            Action::Disconnect { endpoint } => {
                let ep = state.borrow().lanes[lane].endpoint(endpoint);
                h.connectivity(&ep, false).await?;
            }
            Action::Pause { ms } => {
                tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
            }
        }
    }
    Ok(())
}

/// Runs one case (its lanes at the same time), settles, and checks every lane.
/// `Err` names the lane that broke an invariant, and how.
async fn run_lanes(
    h: &mut Harness,
    lanes: &[Vec<Action>],
    options: &FuzzOptions,
) -> Result<(), (usize, String)> {
    let mut state = Lanes {
        lanes: Vec::with_capacity(lanes.len()),
        owner: HashMap::new(),
    };
    for i in 0..lanes.len() {
        let mut lane = Lane::default();
        for _ in 0..options.endpoints.max(1) {
            let ep = h.endpoint();
            for named in [false, true] {
                let t = lane.tracks.entry(key(&ep, named)).or_default();
                t.version = 1;
                let id = format!("{ep}-{}-v1", u8::from(named));
                t.issued.insert(id.clone());
                h.set_config(&ep, named.then_some("network"), &id, &json!({"v": 1}));
            }
            state.owner.insert(ep.clone(), i);
            lane.endpoints.push(ep);
        }
        state.lanes.push(lane);
    }
    // The collector owns the deliveries' receiver while the lanes share the
    // harness; it goes back at the end of the case.
    let (_, placeholder) = tokio::sync::mpsc::unbounded_channel();
    let mut delivered = std::mem::replace(&mut h.delivered, placeholder);
    let state = RefCell::new(state);
    let run = {
        let h: &Harness = h;
        let state = &state;
        let mut all =
            std::pin::pin!(futures::future::join_all(lanes.iter().enumerate().map(
                |(i, actions)| async move { (i, run_lane(h, state, i, actions).await) }
            ),));
        loop {
            tokio::select! {
                results = &mut all => break results,
                Some(d) = delivered.recv() => {
                    state.borrow_mut().route(d);
                }
            }
        }
    };
    if let Some((lane, Err(e))) = run.into_iter().find(|(_, r)| r.is_err()) {
        h.delivered = delivered;
        return Err((lane, e));
    }
    // Settle: every request with a request ID answered (a silent provider makes
    // the CMX wait its 6/CDTP timeout; a loaded machine makes everything slow),
    // then nothing more for the settle time. Requests still unanswered at the
    // deadline (the CDTP timeout plus the settle time plus the grace) are left
    // to invariant 1.
    let mut state = state.into_inner();
    let started = tokio::time::Instant::now();
    let deadline = started + h.target.cdtp_timeout + options.settle + options.grace;
    let mut quiet_until = started + options.settle;
    if state.lanes.iter().any(|l| l.silent_used) {
        quiet_until += h.target.cdtp_timeout;
    }
    loop {
        let outstanding = state.lanes.iter().any(Lane::outstanding);
        let now = tokio::time::Instant::now();
        if now >= deadline || (!outstanding && now >= quiet_until) {
            break;
        }
        let wait_until = if outstanding { deadline } else { quiet_until };
        match tokio::time::timeout_at(wait_until, delivered.recv()).await {
            Ok(Some(d)) => {
                if state.route(d) {
                    quiet_until = quiet_until.max(tokio::time::Instant::now() + options.settle);
                }
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    h.delivered = delivered;
    let mut requests: Vec<Vec<(kaa_cdtp::ConfigRequest<'static>, bool)>> =
        vec![Vec::new(); state.lanes.len()];
    while let Ok(r) = h.requests.try_recv() {
        if let Some(&lane) = state.owner.get(&*r.0.endpoint_id) {
            requests[lane].push(r);
        }
    }
    while h.applied.try_recv().is_ok() {}
    for (i, (lane, requests)) in state.lanes.iter().zip(&requests).enumerate() {
        check(
            &lane.endpoints,
            &lane.tracks,
            &lane.sent,
            &lane.order,
            &lane.delivered,
            requests,
            options,
        )
        .map_err(|e| (i, e))?;
    }
    Ok(())
}

fn note_delivery(tracks: &mut HashMap<(String, bool), Track>, d: &Delivered) {
    let named = d.resource_path.ends_with("/network");
    if d.status_code == 200
        && d.resource_path.starts_with("/config/json")
        && let Some(id) = d
            .payload
            .as_ref()
            .and_then(|p| p.get("configId"))
            .and_then(Value::as_str)
        && let Some(t) = tracks.get_mut(&key(&d.endpoint_id, named))
    {
        t.held = Some(id.to_owned());
    }
}

/// The version number in a config ID the fuzzer issued (`<ep>-<n>-v<version>`).
fn version_of(config_id: &str) -> Option<u32> {
    config_id.rsplit_once("-v")?.1.parse().ok()
}

fn check(
    endpoints: &[String],
    tracks: &HashMap<(String, bool), Track>,
    sent: &HashMap<(String, i32), (bool, bool)>,
    order: &[(String, bool, Option<i32>)],
    delivered: &[Delivered],
    requests: &[(kaa_cdtp::ConfigRequest<'static>, bool)],
    options: &FuzzOptions,
) -> Result<(), String> {
    // 1. One answer per request ID.
    let mut answers: HashMap<(String, i32), usize> = HashMap::new();
    for d in delivered {
        if let Some(id) = d.request_id {
            let k = (d.endpoint_id.clone(), id);
            if !sent.contains_key(&k) {
                return Err(format!(
                    "invariant 1: an answer to a request ID never sent: {d:?}"
                ));
            }
            *answers.entry(k).or_default() += 1;
        }
    }
    for k in sent.keys() {
        match answers.get(k).copied().unwrap_or(0) {
            1 => {}
            n => {
                return Err(format!(
                    "invariant 1: request {} of {} answered {n} times",
                    k.1, k.0
                ));
            }
        }
    }
    for d in delivered {
        let named = d.resource_path.ends_with("/network");
        let is_config = d.resource_path.starts_with("/config/json");
        // 3. Errors carry a reason.
        if d.status_code >= 400 && d.reason.as_deref().is_none_or(str::is_empty) {
            return Err(format!(
                "invariant 3: an error without a reason phrase: {d:?}"
            ));
        }
        // 2. 7/CMP responses.
        if d.status_code == 200 && is_config {
            let Some(Value::Object(p)) = &d.payload else {
                return Err(format!("invariant 2: a 200 without a JSON object: {d:?}"));
            };
            match (p.get("configId"), p.get("config"), p.len()) {
                (None, None, 0) => {}
                (Some(Value::String(id)), Some(config), 2) => {
                    let issued = tracks
                        .get(&key(&d.endpoint_id, named))
                        .is_some_and(|t| t.issued.contains(id));
                    if id.is_empty() {
                        if !config.is_null() {
                            return Err(format!(
                                "invariant 2: configId \"\" with a configuration: {d:?}"
                            ));
                        }
                    } else if !issued {
                        return Err(format!(
                            "invariant 2: a config ID the provider never issued for this endpoint and name: {d:?}"
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "invariant 2: not a 7/CMP response (configId and config as a pair): {d:?}"
                    ));
                }
            }
        }
    }
    // 4. Never older after newer (per endpoint and name, CMX timestamps).
    for ep in endpoints {
        for named in [false, true] {
            let mut newest: Option<(u32, i64)> = None;
            for d in delivered.iter().filter(|d| {
                d.endpoint_id == *ep
                    && d.status_code == 200
                    && d.resource_path.starts_with("/config/json")
                    && d.resource_path.ends_with("/network") == named
            }) {
                let Some(v) = d
                    .payload
                    .as_ref()
                    .and_then(|p| p.get("configId"))
                    .and_then(Value::as_str)
                    .and_then(version_of)
                else {
                    continue;
                };
                if let Some((nv, nt)) = newest {
                    if v < nv && d.timestamp > nt {
                        return Err(format!(
                            "invariant 4: version {v} delivered at {} after version {nv} at {nt}: {d:?}",
                            d.timestamp
                        ));
                    }
                    if v > nv {
                        newest = Some((v, d.timestamp));
                    }
                } else {
                    newest = Some((v, d.timestamp));
                }
            }
        }
    }
    // 5. No push after an answered observe: false, as long as the device sent
    // no further request on that name (a request without request ID is answered
    // like a push, and any request may turn observing on again).
    for (i, (ep, named, request_id)) in order.iter().enumerate() {
        let Some(id) = request_id else { continue };
        if !sent.get(&(ep.clone(), *id)).is_some_and(|s| s.1) {
            continue;
        }
        if order[i + 1..].iter().any(|(e, n, _)| e == ep && n == named) {
            continue;
        }
        let Some(answered_at) = delivered
            .iter()
            .find(|d| d.endpoint_id == *ep && d.request_id == Some(*id) && d.status_code == 200)
            .map(|d| d.timestamp)
        else {
            continue;
        };
        if let Some(push) = delivered.iter().find(|d| {
            d.endpoint_id == *ep
                && d.request_id.is_none()
                && d.resource_path.starts_with("/config/json")
                && d.resource_path.ends_with("/network") == *named
                && d.timestamp > answered_at
        }) {
            return Err(format!(
                "invariant 5: a push after observe: false was answered at {answered_at} (request {id}), with no request since: {push:?}"
            ));
        }
    }
    // 6. (extension) One 6/CDTP request in flight per endpoint and name.
    if !options.skip_extensions {
        let mut unanswered: HashMap<(String, String), i64> = HashMap::new();
        for (r, silent) in requests {
            let k = (
                r.endpoint_id.to_string(),
                r.config_name.as_deref().unwrap_or("").to_owned(),
            );
            if let Some(&until) = unanswered.get(&k)
                && r.timestamp + 1 < until
            {
                return Err(format!(
                    "invariant 6 (kaa-rs extension): a second 6/CDTP request for {k:?} at {} while one left unanswered runs until {until}",
                    r.timestamp
                ));
            }
            if *silent && r.timeout > 0 {
                unanswered.insert(k, r.timestamp + r.timeout);
            } else {
                unanswered.remove(&k);
            }
        }
    }
    Ok(())
}
