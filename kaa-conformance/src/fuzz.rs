//! Fuzzing mode for a CMX: long runs of generated sequences (device requests with
//! valid, boundary and malformed payloads, applied and rejected reports,
//! configuration changes, connects and disconnects, a provider that answers,
//! fails, says "no configuration" or stays silent, pauses that let the bus
//! reorder) against the CMX under test, checking after each sequence what a
//! conformant CMX must never do. Sequences come from [proptest](mod@proptest) strategies on a
//! seeded ChaCha generator, so a run is reproduced by its seed, and a failing
//! sequence is shrunk to a short one by proptest's shrinking.
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
    /// How many sequences to run.
    pub sequences: u32,
    /// The longest sequence.
    pub max_actions: usize,
    /// How many endpoints a sequence uses.
    pub endpoints: u8,
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
        /// Sequences run.
        sequences: u32,
    },
    /// A sequence broke an invariant: the shrunk sequence and what broke.
    Failed {
        /// The violated invariant, with the messages that show it.
        reason: String,
        /// The shortest failing sequence proptest found.
        sequence: Vec<Action>,
    },
}

/// Runs `options.sequences` generated sequences against the CMX named in
/// `target`, calling `progress` after each sequence run (shrinking runs count
/// too). Blocks: call it from a blocking thread (`tokio::task::spawn_blocking`)
/// with a handle to the runtime the bus lives on.
pub fn run_cmx_fuzz(
    runtime: tokio::runtime::Handle,
    bus: Arc<dyn Bus>,
    target: &CmxTarget,
    options: &FuzzOptions,
    progress: impl Fn() + Sync,
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
    let strategy = prop::collection::vec(action(options.endpoints.max(1)), 1..=options.max_actions);
    let result = runner.run(&strategy, |actions| {
        let mut h = harness
            .lock()
            .map_err(|_| TestCaseError::fail("the harness lock was poisoned"))?;
        let outcome = runtime.block_on(run_sequence(&mut h, &actions, options));
        progress();
        outcome.map_err(TestCaseError::fail)
    });
    Ok(match result {
        Ok(()) => FuzzOutcome::Passed {
            sequences: options.sequences,
        },
        Err(TestError::Fail(reason, sequence)) => FuzzOutcome::Failed {
            reason: reason.message().to_owned(),
            sequence,
        },
        Err(TestError::Abort(reason)) => FuzzOutcome::Failed {
            reason: format!("aborted: {}", reason.message()),
            sequence: Vec::new(),
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
    Ok(run_sequence(&mut h, actions, options).await)
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

async fn run_sequence(
    h: &mut Harness,
    actions: &[Action],
    options: &FuzzOptions,
) -> Result<(), String> {
    let endpoints: Vec<String> = (0..options.endpoints.max(1))
        .map(|_| h.endpoint())
        .collect();
    let mut tracks: HashMap<(String, bool), Track> = HashMap::new();
    for ep in &endpoints {
        for named in [false, true] {
            let t = tracks.entry(key(ep, named)).or_default();
            t.version = 1;
            let id = format!("{ep}-{}-v1", u8::from(named));
            t.issued.insert(id.clone());
            h.set_config(ep, named.then_some("network"), &id, &json!({"v": 1}));
        }
    }
    let mut next_request_id = 0i32;
    // (endpoint, request ID) → the config path and whether it asked observe: false.
    let mut sent: HashMap<(String, i32), (bool, bool)> = HashMap::new();
    // Every configuration request in the order sent: (endpoint, named, request ID).
    let mut order: Vec<(String, bool, Option<i32>)> = Vec::new();
    let mut delivered: Vec<Delivered> = Vec::new();
    let mut silent_used = false;
    for a in actions {
        // Keep what arrived so far (the "held" config ID needs it).
        while let Ok(d) = h.delivered.try_recv() {
            // Late answers for an earlier sequence's endpoints are not this one's.
            if endpoints.contains(&d.endpoint_id) {
                note_delivery(&mut tracks, &d);
                delivered.push(d);
            }
        }
        match *a {
            Action::Request {
                endpoint,
                named,
                with_request_id,
                payload,
            } => {
                let ep = &endpoints[usize::from(endpoint) % endpoints.len()];
                let request_id = with_request_id.then(|| {
                    next_request_id += 1;
                    next_request_id
                });
                let held = tracks.get(&key(ep, named)).and_then(|t| t.held.clone());
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
                order.push((ep.clone(), named, request_id));
                if let Some(id) = request_id {
                    sent.insert(
                        (ep.clone(), id),
                        (named, payload == RequestPayload::ObserveOff),
                    );
                }
                let datum = h
                    .client_data(ep, config_path(named), request_id, &body)
                    .to_vec();
                h.send_datum(datum).await?;
            }
            Action::Applied {
                endpoint,
                named,
                reject,
            } => {
                let ep = &endpoints[usize::from(endpoint) % endpoints.len()];
                let Some(id) = tracks.get(&key(ep, named)).and_then(|t| t.held.clone()) else {
                    continue;
                };
                let body = if reject {
                    json!({"configId": id, "statusCode": 400, "reasonPhrase": "rejected by the fuzzer"})
                } else {
                    json!({"configId": id})
                };
                h.send(ep, applied_path(named), None, &body).await?;
            }
            Action::Update { endpoint, named } => {
                let ep = &endpoints[usize::from(endpoint) % endpoints.len()];
                let t = tracks.entry(key(ep, named)).or_default();
                t.version += 1;
                let id = format!("{ep}-{}-v{}", u8::from(named), t.version);
                t.issued.insert(id.clone());
                let v = t.version;
                h.update(ep, named.then_some("network"), &id, &json!({"v": v}))
                    .await?;
            }
            Action::Provider {
                endpoint,
                named,
                mode,
            } => {
                let ep = &endpoints[usize::from(endpoint) % endpoints.len()];
                let name = named.then_some("network");
                let t = tracks.entry(key(ep, named)).or_default();
                let answer = match mode {
                    ProviderMode::Normal => Answer::Config {
                        id: format!("{ep}-{}-v{}", u8::from(named), t.version),
                        content: json!({"v": t.version}).to_string(),
                    },
                    ProviderMode::Error => Answer::Error {
                        status: 500,
                        reason: "the fuzzer's provider fails".into(),
                    },
                    ProviderMode::Absent => Answer::Absent,
                    ProviderMode::Silent => {
                        silent_used = true;
                        Answer::Silent
                    }
                };
                h.set(ep, name, answer);
            }
            Action::Connect { endpoint } => {
                let ep = &endpoints[usize::from(endpoint) % endpoints.len()];
                h.connectivity(ep, true).await?;
            }
            Action::Disconnect { endpoint } => {
                let ep = &endpoints[usize::from(endpoint) % endpoints.len()];
                h.connectivity(ep, false).await?;
            }
            Action::Pause { ms } => {
                tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
            }
        }
    }
    // Settle: every request with a request ID answered (a silent provider makes
    // the CMX wait its 6/CDTP timeout; a loaded machine makes everything slow),
    // then nothing more for the settle time. Requests still unanswered at the
    // deadline (the CDTP timeout plus the settle time plus the grace) are left
    // to invariant 1.
    let started = tokio::time::Instant::now();
    let deadline = started + h.target.cdtp_timeout + options.settle + options.grace;
    let mut quiet_until = started + options.settle;
    if silent_used {
        quiet_until += h.target.cdtp_timeout;
    }
    loop {
        let answered: HashSet<(&str, i32)> = delivered
            .iter()
            .filter_map(|d| Some((d.endpoint_id.as_str(), d.request_id?)))
            .collect();
        let outstanding = sent
            .keys()
            .any(|(ep, id)| !answered.contains(&(ep.as_str(), *id)));
        let now = tokio::time::Instant::now();
        if now >= deadline || (!outstanding && now >= quiet_until) {
            break;
        }
        let wait_until = if outstanding { deadline } else { quiet_until };
        match tokio::time::timeout_at(wait_until, h.delivered.recv()).await {
            Ok(Some(d)) => {
                if endpoints.contains(&d.endpoint_id) {
                    note_delivery(&mut tracks, &d);
                    delivered.push(d);
                    quiet_until = quiet_until.max(tokio::time::Instant::now() + options.settle);
                }
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    let mut requests = Vec::new();
    while let Ok(r) = h.requests.try_recv() {
        if endpoints.iter().any(|e| *e == *r.0.endpoint_id) {
            requests.push(r);
        }
    }
    while h.applied.try_recv().is_ok() {}
    check(
        &endpoints, &tracks, &sent, &order, &delivered, &requests, options,
    )
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
