//! The CMX under test: the kit plays the communication service (KPC) and the
//! configuration provider (ECR) around it, over the bus, in Avro, and checks what
//! the CMX publishes.
//!
//! The CMX must be configured with the provider and communication service
//! instance names given in [`CmxTarget`] (Kaa's
//! `kaa.cmx.configuration-data-provider.service-instance.name` and
//! `kaa.cmx.communication-service.service-instance.name`): the kit answers its
//! 6/CDTP requests as that provider and receives its 4/ESP `ExtensionData` as that
//! communication service. Nothing else may play those parts on the same NATS
//! while the kit runs. Endpoint IDs carry a tag unique to the run, so other
//! traffic on the server does not disturb the cases.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kaa_bus::{Bus, BusError, Message};
use kaa_cdtp::{ConfigApplied, ConfigRequest, ConfigResponse, ConfigUpdated, Current};
use kaa_elce::{ConnectedEvent, DisconnectedEvent, EventKind};
use kaa_esp::{ClientData, ExtensionData};
use kaa_ism::avro::{Decode, Encode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::report::{CaseInfo, CaseResult, Outcome, Report, run_cases};

/// The CMX to check and the names the kit plays.
#[derive(Debug, Clone)]
pub struct CmxTarget {
    /// The CMX's service instance name: the kit sends `ClientData` to
    /// `kaa.v1.service.<cmx>.esp.ClientData`.
    pub cmx_instance: String,
    /// The configuration provider the CMX asks (6/CDTP): the kit answers
    /// `kaa.v1.service.<provider>.cdtp.request` and announces
    /// `kaa.v1.events.<provider>.endpoint.config.updated`.
    pub provider: String,
    /// The communication service the CMX answers (4/ESP): the kit receives
    /// `kaa.v1.service.<kpc>.esp.ExtensionData` and publishes 9/ELCE
    /// connectivity events as `<kpc>`.
    pub communication_service: String,
    /// The replica ID the kit's communication service uses (its `replyTo` is
    /// `kaa.v1.replica.<id>.esp.ExtensionData`).
    pub kpc_replica: String,
    /// The app version the kit's endpoints belong to.
    pub app_version: String,
    /// The CMX's 6/CDTP timeout: how long it waits for the provider before it
    /// answers a device 504 (the kit waits this long plus [`SuiteOptions::wait`]).
    pub cdtp_timeout: Duration,
}

impl CmxTarget {
    /// A target with the names Kaa's defaults use: CMX `cmx`, provider `ecr`,
    /// communication service `kpc`, a 5 s CDTP timeout.
    pub fn new(cmx_instance: impl Into<String>) -> Self {
        CmxTarget {
            cmx_instance: cmx_instance.into(),
            provider: "ecr".into(),
            communication_service: "kpc".into(),
            kpc_replica: "kaa-conformance-kpc-1".into(),
            app_version: "conformance-v1".into(),
            cdtp_timeout: Duration::from_secs(5),
        }
    }
}

/// How a suite runs (every mode takes these; also at the crate root).
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Skip the cases that check kaa-rs extensions.
    pub skip_extensions: bool,
    /// Run only the cases whose ID starts with one of these (all when empty).
    pub only: Vec<String>,
    /// How long to wait for a message a case expects.
    pub wait: Duration,
    /// How long to watch to be sure a message does not come.
    pub quiet: Duration,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        SuiteOptions {
            skip_extensions: false,
            only: Vec::new(),
            wait: Duration::from_secs(5),
            quiet: Duration::from_millis(500),
        }
    }
}

impl SuiteOptions {
    /// Why `case` does not run under these options (`--only`,
    /// `--skip-extensions`), or `None` when it runs. Every mode's runner asks
    /// this first.
    pub fn skip(&self, case: &CaseInfo) -> Option<Outcome> {
        let selected =
            self.only.is_empty() || self.only.iter().any(|p| case.id.starts_with(p.as_str()));
        if !selected {
            Some(Outcome::Skipped("not selected (--only)".into()))
        } else if case.extension && self.skip_extensions {
            Some(Outcome::Skipped(
                "kaa-rs extension (--skip-extensions)".into(),
            ))
        } else {
            None
        }
    }
}

/// Every case of the CMX suite, in the order they run.
pub const CASES: &[CaseInfo] = &[
    CaseInfo {
        id: "CMP-REQ-1",
        title: "a request without configId gets the current configuration",
        cites: "7/CMP Configuration resource request: configId missing; 4/ESP ExtensionData on the ClientData's replyTo",
        extension: false,
    },
    CaseInfo {
        id: "CMP-REQ-2",
        title: "a request with the current configId gets {} (unchanged)",
        cites: "7/CMP: configId and config absent when the configuration matches",
        extension: false,
    },
    CaseInfo {
        id: "CMP-REQ-3",
        title: "a request with an older configId gets the current configuration",
        cites: "7/CMP: send new configuration if it differs from configId",
        extension: false,
    },
    CaseInfo {
        id: "CMP-REQ-4",
        title: "no configuration assigned: configId \"\" and config null",
        cites: "7/CMP Absent configuration; 6/CDTP 404",
        extension: false,
    },
    CaseInfo {
        id: "CMP-REQ-5",
        title: "a payload that is not a 7/CMP request is answered 400 with a reason",
        cites: "7/CMP request schema; 1/KP error response (4/ESP statusCode, reasonPhrase)",
        extension: false,
    },
    CaseInfo {
        id: "CMP-REQ-6",
        title: "a provider error reaches the device as an error with a reason",
        cites: "6/CDTP statusCode/reasonPhrase; 4/ESP statusCode, reasonPhrase",
        extension: false,
    },
    CaseInfo {
        id: "CMP-REQ-7",
        title: "a provider that never answers: the device gets an error after the CDTP timeout",
        cites: "3/ISM timeout; 6/CDTP; 4/ESP error response",
        extension: false,
    },
    CaseInfo {
        id: "CMP-OBS-1",
        title: "observe: true, then a configuration change: one push with the new configuration",
        cites: "7/CMP: observe true, MUST send new configuration whenever it changes; 6/CDTP ConfigUpdated",
        extension: false,
    },
    CaseInfo {
        id: "CMP-OBS-2",
        title: "observe: false: no push after a change",
        cites: "7/CMP: observe false, MUST NOT send new configurations",
        extension: false,
    },
    CaseInfo {
        id: "CMP-CON-1",
        title: "a connecting endpoint that has not applied the current configuration gets it pushed",
        cites: "7/CMP UC2 Configuration push; 9/ELCE connected",
        extension: false,
    },
    CaseInfo {
        id: "CMP-CON-2",
        title: "offline during three changes: exactly one push on reconnect, the latest",
        cites: "7/CMP UC2; kaa-notes CMX behaviour (offline devices get the latest only)",
        extension: false,
    },
    CaseInfo {
        id: "CMP-NAME-1",
        title: "named configurations are fetched by name and pushed independently",
        cites: "7/CMP UC3 Named configurations, /config/json/<name>; 6/CDTP configName",
        extension: false,
    },
    CaseInfo {
        id: "CMP-APP-1",
        title: "an applied report is broadcast as endpoint.config.applied with status 200",
        cites: "7/CMP /applied resource; 6/CDTP ConfigApplied",
        extension: false,
    },
    CaseInfo {
        id: "CMP-APP-2",
        title: "a rejected report is broadcast with its status and reason",
        cites: "7/CMP /applied statusCode, reasonPhrase; 6/CDTP ConfigApplied",
        extension: false,
    },
    CaseInfo {
        id: "CMP-APP-3",
        title: "a configuration the device rejected is not pushed again",
        cites: "kaa-rs CMX behaviour (kaa_cmp engine docs: a rejected configuration is not pushed again)",
        extension: true,
    },
    CaseInfo {
        id: "ESP-OLD-1",
        title: "a ClientData from an older writer (no configName) is served",
        cites: "4/ESP ClientData schema; Avro schema resolution (field added with a default)",
        extension: false,
    },
];

/// A message the kit's communication service received.
#[derive(Debug, Clone)]
pub(crate) struct Delivered {
    pub(crate) endpoint_id: String,
    pub(crate) resource_path: String,
    pub(crate) request_id: Option<i32>,
    pub(crate) status_code: i32,
    pub(crate) reason: Option<String>,
    pub(crate) payload: Option<Value>,
    /// The CMX's `timestamp` (Unix ms) on the message.
    pub(crate) timestamp: i64,
}

/// What the kit's provider answers for an endpoint and configuration name.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Config { id: String, content: String },
    Absent,
    Error { status: i32, reason: String },
    Silent,
}

type ProviderTable = Arc<Mutex<HashMap<(String, String), Answer>>>;

/// The parts the kit plays, running on the bus.
pub(crate) struct Harness {
    bus: Arc<dyn Bus>,
    pub(crate) target: CmxTarget,
    pub(crate) options: SuiteOptions,
    tag: String,
    table: ProviderTable,
    pub(crate) delivered: mpsc::UnboundedReceiver<Delivered>,
    pub(crate) applied: mpsc::UnboundedReceiver<ConfigApplied<'static>>,
    /// The 6/CDTP requests the CMX sent for the run's endpoints, and whether
    /// the kit left each unanswered.
    pub(crate) requests: mpsc::UnboundedReceiver<(ConfigRequest<'static>, bool)>,
    tasks: Vec<JoinHandle<()>>,
    next: u32,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn subject_error(e: kaa_ism::subject::SubjectError) -> BusError {
    BusError::InvalidSubject {
        subject: e.to_string(),
        reason: "an instance name given to the kit",
    }
}

impl Harness {
    pub(crate) async fn start(
        bus: Arc<dyn Bus>,
        target: &CmxTarget,
        options: &SuiteOptions,
    ) -> Result<Self, BusError> {
        let tag = format!(
            "conf{}x{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() % 1_000_000)
                .unwrap_or(0)
        );
        let table: ProviderTable = Arc::default();
        let mut tasks = Vec::new();

        // The provider.
        let request_subject = kaa_cdtp::subject::request_subject(&target.provider)
            .map_err(subject_error)?
            .to_string();
        let mut requests_sub = bus
            .subscribe(&request_subject, Some(&target.provider))
            .await?;
        let (requests_tx, requests) = mpsc::unbounded_channel();
        {
            let bus = Arc::clone(&bus);
            let table = Arc::clone(&table);
            let tag = tag.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(m) = requests_sub.next().await {
                    answer_request(bus.as_ref(), &table, &tag, &m, &requests_tx).await;
                }
            }));
        }

        // The communication service: its replica subject and its instance subject.
        let replica_subject = kaa_esp::subject::extension_data_replica_subject(&target.kpc_replica)
            .map_err(subject_error)?
            .to_string();
        let instance_subject =
            kaa_esp::subject::extension_data_subject(&target.communication_service)
                .map_err(subject_error)?
                .to_string();
        let (delivered_tx, delivered) = mpsc::unbounded_channel();
        for sub in [
            bus.subscribe(&replica_subject, None).await?,
            bus.subscribe(&instance_subject, Some(&target.communication_service))
                .await?,
        ] {
            let tx = delivered_tx.clone();
            let tag = tag.clone();
            let mut sub = sub;
            tasks.push(tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    if let Some(d) = delivered_of(&m, &tag)
                        && tx.send(d).is_err()
                    {
                        return;
                    }
                }
            }));
        }

        // endpoint.config.applied broadcasts of the CMX.
        let applied_subject = kaa_cdtp::subject::config_applied_subject(&target.cmx_instance)
            .map_err(subject_error)?
            .to_string();
        let mut applied_sub = bus.subscribe(&applied_subject, None).await?;
        let (applied_tx, applied) = mpsc::unbounded_channel();
        {
            let tag = tag.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(m) = applied_sub.next().await {
                    if let Ok(a) = ConfigApplied::decode(&m.payload)
                        && a.endpoint_id.starts_with(&tag)
                        && applied_tx.send(a.into_owned()).is_err()
                    {
                        return;
                    }
                }
            }));
        }
        kaa_bus::subscription_barrier(bus.as_ref(), Duration::from_secs(5)).await?;
        Ok(Harness {
            bus,
            target: target.clone(),
            options: options.clone(),
            tag,
            table,
            delivered,
            applied,
            requests,
            tasks,
            next: 0,
        })
    }

    /// A fresh endpoint ID for one case.
    pub(crate) fn endpoint(&mut self) -> String {
        self.next += 1;
        format!("{}-ep{}", self.tag, self.next)
    }

    pub(crate) fn set(&self, endpoint: &str, name: Option<&str>, answer: Answer) {
        if let Ok(mut t) = self.table.lock() {
            t.insert((endpoint.to_owned(), name.unwrap_or("").to_owned()), answer);
        }
    }

    pub(crate) fn set_config(&self, endpoint: &str, name: Option<&str>, id: &str, content: &Value) {
        self.set(
            endpoint,
            name,
            Answer::Config {
                id: id.to_owned(),
                content: content.to_string(),
            },
        );
    }

    /// Sets the provider's configuration and announces the change.
    pub(crate) async fn update(
        &self,
        endpoint: &str,
        name: Option<&str>,
        id: &str,
        content: &Value,
    ) -> Result<(), String> {
        self.set_config(endpoint, name, id, content);
        let content = content.to_string();
        let event = ConfigUpdated {
            correlation_id: format!("{}-upd-{id}", self.tag).into(),
            timestamp: kaa_now(),
            timeout: 0,
            app_version_name: self.target.app_version.as_str().into(),
            endpoint_id: endpoint.into(),
            config_id: id.into(),
            content_type: kaa_cdtp::APPLICATION_JSON.into(),
            content: content.as_bytes().into(),
            originator_replica_id: Some("kaa-conformance-provider".into()),
            config_name: name.map(Into::into),
        };
        let subject = kaa_cdtp::subject::config_updated_subject(&self.target.provider)
            .map_err(|e| e.to_string())?
            .to_string();
        self.publish(&subject, None, event.to_vec()).await
    }

    async fn publish(
        &self,
        subject: &str,
        reply_to: Option<&str>,
        datum: Vec<u8>,
    ) -> Result<(), String> {
        self.bus
            .publish_message(subject, reply_to, Bytes::from(datum))
            .await
            .map_err(|e| format!("publishing to {subject}: {e}"))
    }

    pub(crate) fn client_data(
        &self,
        endpoint: &str,
        path: &str,
        request_id: Option<i32>,
        payload: &[u8],
    ) -> ClientData<'static> {
        ClientData {
            correlation_id: format!("{}-{endpoint}-{path}-{request_id:?}", self.tag).into(),
            timestamp: kaa_now(),
            timeout: 0,
            app_version_name: self.target.app_version.clone().into(),
            endpoint_id: Some(endpoint.to_owned().into()),
            resource_path: path.to_owned().into(),
            request_id,
            payload: payload.to_vec().into(),
            config_name: None,
        }
    }

    /// Sends a device's message as the communication service does.
    pub(crate) async fn send(
        &self,
        endpoint: &str,
        path: &str,
        request_id: Option<i32>,
        payload: &Value,
    ) -> Result<(), String> {
        let datum = self
            .client_data(endpoint, path, request_id, payload.to_string().as_bytes())
            .to_vec();
        self.send_datum(datum).await
    }

    pub(crate) async fn send_datum(&self, datum: Vec<u8>) -> Result<(), String> {
        let subject = kaa_esp::subject::client_data_subject(&self.target.cmx_instance)
            .map_err(|e| e.to_string())?
            .to_string();
        let reply_to = kaa_esp::subject::extension_data_replica_subject(&self.target.kpc_replica)
            .map_err(|e| e.to_string())?
            .to_string();
        self.publish(&subject, Some(&reply_to), datum).await
    }

    pub(crate) async fn connectivity(&self, endpoint: &str, connected: bool) -> Result<(), String> {
        let endpoints = vec![(
            endpoint.to_owned().into(),
            self.target.app_version.clone().into(),
        )];
        let correlation_id = format!("{}-{endpoint}-{connected}", self.tag);
        let (kind, datum) = if connected {
            let e = ConnectedEvent {
                correlation_id: correlation_id.into(),
                timestamp: kaa_now(),
                timeout: 0,
                endpoints,
                originator_replica_id: self.target.kpc_replica.as_str().into(),
            };
            (EventKind::Connected, e.to_vec())
        } else {
            let e = DisconnectedEvent {
                correlation_id: correlation_id.into(),
                timestamp: kaa_now(),
                timeout: 0,
                endpoints,
                originator_replica_id: self.target.kpc_replica.as_str().into(),
            };
            (EventKind::Disconnected, e.to_vec())
        };
        let subject = kind
            .subject(&self.target.communication_service)
            .map_err(|e| e.to_string())?
            .to_string();
        self.publish(&subject, None, datum).await
    }

    /// The next message for `endpoint`, within `within`.
    async fn next_for(&mut self, endpoint: &str, within: Duration) -> Option<Delivered> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.delivered.recv()).await {
                Ok(Some(d)) if d.endpoint_id == endpoint => return Some(d),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The answer to request `request_id` of `endpoint`.
    async fn expect_reply(&mut self, endpoint: &str, request_id: i32) -> Result<Delivered, String> {
        self.expect_reply_within(endpoint, request_id, self.options.wait)
            .await
    }

    async fn expect_reply_within(
        &mut self,
        endpoint: &str,
        request_id: i32,
        within: Duration,
    ) -> Result<Delivered, String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_for(endpoint, left).await {
                Some(d) if d.request_id == Some(request_id) => return Ok(d),
                Some(_) => continue,
                None => {
                    return Err(format!(
                        "no ExtensionData answering request {request_id} of {endpoint} within {within:?}"
                    ));
                }
            }
        }
    }

    /// A push (an `ExtensionData` without request ID) to `endpoint`.
    async fn expect_push(&mut self, endpoint: &str) -> Result<Delivered, String> {
        let wait = self.options.wait;
        match self.next_for(endpoint, wait).await {
            Some(d) if d.request_id.is_none() => Ok(d),
            Some(d) => Err(format!(
                "expected a push (no requestId), got an answer to request {:?}: {d:?}",
                d.request_id
            )),
            None => Err(format!("no push to {endpoint} within {wait:?}")),
        }
    }

    /// Nothing more for `endpoint` for the quiet time.
    async fn expect_nothing(&mut self, endpoint: &str) -> Result<(), String> {
        match self.next_for(endpoint, self.options.quiet).await {
            None => Ok(()),
            Some(d) => Err(format!("expected nothing more for {endpoint}, got {d:?}")),
        }
    }

    async fn expect_applied(&mut self, endpoint: &str) -> Result<ConfigApplied<'static>, String> {
        let deadline = tokio::time::Instant::now() + self.options.wait;
        loop {
            match tokio::time::timeout_at(deadline, self.applied.recv()).await {
                Ok(Some(a)) if a.endpoint_id == endpoint => return Ok(a),
                Ok(Some(_)) => continue,
                _ => {
                    return Err(format!(
                        "no endpoint.config.applied for {endpoint} within {:?}",
                        self.options.wait
                    ));
                }
            }
        }
    }

    /// The 6/CDTP requests the CMX sent so far for `endpoint`.
    fn requests_for(&mut self, endpoint: &str) -> Vec<ConfigRequest<'static>> {
        let mut mine = Vec::new();
        while let Ok((r, _)) = self.requests.try_recv() {
            if r.endpoint_id == endpoint {
                mine.push(r);
            }
        }
        mine
    }

    /// Requests `path` with observe and waits for the current configuration.
    async fn observe(
        &mut self,
        endpoint: &str,
        path: &str,
        request_id: i32,
    ) -> Result<Delivered, String> {
        self.send(endpoint, path, Some(request_id), &json!({"observe": true}))
            .await?;
        let d = self.expect_reply(endpoint, request_id).await?;
        expect_status(&d, 200)?;
        Ok(d)
    }

    async fn report_applied(
        &mut self,
        endpoint: &str,
        path: &str,
        config_id: &str,
    ) -> Result<(), String> {
        self.send(endpoint, path, None, &json!({"configId": config_id}))
            .await?;
        let a = self.expect_applied(endpoint).await?;
        if a.config_id != config_id {
            return Err(format!(
                "endpoint.config.applied names {:?}, the device applied {config_id:?}",
                a.config_id
            ));
        }
        Ok(())
    }
}

fn kaa_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn delivered_of(m: &Message, tag: &str) -> Option<Delivered> {
    let e = ExtensionData::decode(&m.payload).ok()?;
    let endpoint_id = e.endpoint_id.as_deref()?.to_owned();
    if !endpoint_id.starts_with(tag) {
        return None;
    }
    Some(Delivered {
        endpoint_id,
        resource_path: e.resource_path.to_string(),
        request_id: e.request_id,
        status_code: e.status_code,
        reason: e.reason_phrase.map(|r| r.to_string()),
        timestamp: e.timestamp,
        payload: e.payload.as_deref().map(|p| {
            serde_json::from_slice(p)
                .unwrap_or_else(|_| json!({"<not JSON>": String::from_utf8_lossy(p)}))
        }),
    })
}

async fn answer_request(
    bus: &dyn Bus,
    table: &ProviderTable,
    tag: &str,
    m: &Message,
    seen: &mpsc::UnboundedSender<(ConfigRequest<'static>, bool)>,
) {
    let Some(reply_to) = m.reply_to.as_deref() else {
        return;
    };
    let Ok(request) = ConfigRequest::decode(&m.payload) else {
        return;
    };
    let key = (
        request.endpoint_id.to_string(),
        request.config_name.as_deref().unwrap_or("").to_owned(),
    );
    let answer = if request.endpoint_id.starts_with(tag) {
        let answer = table.lock().ok().and_then(|t| t.get(&key).cloned());
        let silent = matches!(answer, Some(Answer::Silent));
        let _ = seen.send((request.clone().into_owned(), silent));
        answer
    } else {
        None
    };
    let now = kaa_now();
    let response = match answer.unwrap_or(Answer::Absent) {
        Answer::Silent => return,
        Answer::Absent => ConfigResponse::answer(&request, Current::Absent, now),
        Answer::Error { status, reason } => {
            ConfigResponse::error(Some(&request), status, reason, now)
        }
        Answer::Config { id, content } => {
            let response = ConfigResponse::answer(
                &request,
                Current::Config {
                    config_id: &id,
                    content: content.as_bytes(),
                },
                now,
            );
            let _ = bus.publish(reply_to, Bytes::from(response.to_vec())).await;
            return;
        }
    };
    let _ = bus.publish(reply_to, Bytes::from(response.to_vec())).await;
}

fn expect_status(d: &Delivered, status: i32) -> Result<(), String> {
    if d.status_code == status {
        Ok(())
    } else {
        Err(format!(
            "expected status {status}, got {} (reason {:?}, payload {:?})",
            d.status_code, d.reason, d.payload
        ))
    }
}

fn expect_payload(d: &Delivered, want: &Value) -> Result<(), String> {
    if d.payload.as_ref() == Some(want) {
        Ok(())
    } else {
        Err(format!("expected payload {want}, got {:?}", d.payload))
    }
}

fn expect_error_with_reason(
    d: &Delivered,
    range: std::ops::RangeInclusive<i32>,
) -> Result<(), String> {
    if !range.contains(&d.status_code) {
        return Err(format!(
            "expected a status in {range:?}, got {} (payload {:?})",
            d.status_code, d.payload
        ));
    }
    match d.reason.as_deref() {
        Some(r) if !r.is_empty() => Ok(()),
        _ => Err(format!("status {} without a reason phrase", d.status_code)),
    }
}

/// Runs the CMX suite against the CMX named in `target` over `bus`, calling
/// `progress` after each case.
pub async fn run_cmx_suite(
    bus: Arc<dyn Bus>,
    target: &CmxTarget,
    options: &SuiteOptions,
    progress: impl FnMut(&CaseResult),
) -> Result<Report, BusError> {
    let mut h = Harness::start(bus, target, options).await?;
    Ok(run_cases(
        format!("cmx {}", target.cmx_instance),
        CASES,
        &mut h,
        |case| options.skip(case),
        run_case,
        |h| {
            while h.delivered.try_recv().is_ok() {}
            while h.applied.try_recv().is_ok() {}
            while h.requests.try_recv().is_ok() {}
        },
        progress,
    )
    .await)
}

async fn run_case(id: &str, h: &mut Harness) -> Result<(), String> {
    match id {
        "CMP-REQ-1" => req_current(h).await,
        "CMP-REQ-2" => req_unchanged(h).await,
        "CMP-REQ-3" => req_older(h).await,
        "CMP-REQ-4" => req_absent(h).await,
        "CMP-REQ-5" => req_malformed(h).await,
        "CMP-REQ-6" => req_provider_error(h).await,
        "CMP-REQ-7" => req_provider_silent(h).await,
        "CMP-OBS-1" => obs_push(h).await,
        "CMP-OBS-2" => obs_off(h).await,
        "CMP-CON-1" => con_push(h).await,
        "CMP-CON-2" => con_offline_latest(h).await,
        "CMP-NAME-1" => named(h).await,
        "CMP-APP-1" => applied(h).await,
        "CMP-APP-2" => rejected(h).await,
        "CMP-APP-3" => rejected_not_pushed(h).await,
        "ESP-OLD-1" => old_writer(h).await,
        other => Err(format!("unknown case {other}")),
    }
}

async fn req_current(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.set_config(&ep, None, "cfg-1", &json!({"sampling": 200}));
    h.send(&ep, "/config/json", Some(1), &json!({})).await?;
    let d = h.expect_reply(&ep, 1).await?;
    expect_status(&d, 200)?;
    expect_payload(
        &d,
        &json!({"configId": "cfg-1", "config": {"sampling": 200}}),
    )?;
    if d.resource_path != "/config/json" {
        return Err(format!("answer on resource path {:?}", d.resource_path));
    }
    Ok(())
}

async fn req_unchanged(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.set_config(&ep, None, "cfg-1", &json!({"a": 1}));
    h.send(&ep, "/config/json", Some(1), &json!({"configId": "cfg-1"}))
        .await?;
    let d = h.expect_reply(&ep, 1).await?;
    expect_status(&d, 200)?;
    expect_payload(&d, &json!({}))
}

async fn req_older(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.set_config(&ep, None, "cfg-2", &json!({"a": 2}));
    h.send(&ep, "/config/json", Some(1), &json!({"configId": "cfg-1"}))
        .await?;
    let d = h.expect_reply(&ep, 1).await?;
    expect_status(&d, 200)?;
    expect_payload(&d, &json!({"configId": "cfg-2", "config": {"a": 2}}))
}

async fn req_absent(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.set(&ep, None, Answer::Absent);
    h.send(&ep, "/config/json", Some(1), &json!({})).await?;
    let d = h.expect_reply(&ep, 1).await?;
    expect_status(&d, 200)?;
    expect_payload(&d, &json!({"configId": "", "config": null}))
}

async fn req_malformed(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.set_config(&ep, None, "cfg-1", &json!({}));
    let datum = h
        .client_data(&ep, "/config/json", Some(1), b"{not json")
        .to_vec();
    h.send_datum(datum).await?;
    let d = h.expect_reply(&ep, 1).await?;
    expect_error_with_reason(&d, 400..=400)?;
    h.send(&ep, "/config/json", Some(2), &json!({"observe": "yes"}))
        .await?;
    let d = h.expect_reply(&ep, 2).await?;
    expect_error_with_reason(&d, 400..=400)
}

async fn req_provider_error(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.set(
        &ep,
        None,
        Answer::Error {
            status: 500,
            reason: "store unavailable".into(),
        },
    );
    h.send(&ep, "/config/json", Some(1), &json!({})).await?;
    let d = h.expect_reply(&ep, 1).await?;
    expect_error_with_reason(&d, 500..=599)
}

async fn req_provider_silent(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.set(&ep, None, Answer::Silent);
    h.send(&ep, "/config/json", Some(1), &json!({})).await?;
    let within = h.target.cdtp_timeout + h.options.wait;
    let d = h.expect_reply_within(&ep, 1, within).await?;
    expect_error_with_reason(&d, 500..=599)
}

async fn obs_push(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.set_config(&ep, None, "cfg-1", &json!({"v": 1}));
    h.observe(&ep, "/config/json", 1).await?;
    h.report_applied(&ep, "/applied/json", "cfg-1").await?;
    h.update(&ep, None, "cfg-2", &json!({"v": 2})).await?;
    let push = h.expect_push(&ep).await?;
    expect_status(&push, 200)?;
    expect_payload(&push, &json!({"configId": "cfg-2", "config": {"v": 2}}))?;
    h.expect_nothing(&ep).await
}

async fn obs_off(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.set_config(&ep, None, "cfg-1", &json!({"v": 1}));
    h.send(&ep, "/config/json", Some(1), &json!({"observe": false}))
        .await?;
    expect_status(&h.expect_reply(&ep, 1).await?, 200)?;
    h.connectivity(&ep, true).await?;
    h.report_applied(&ep, "/applied/json", "cfg-1").await?;
    // Whatever the connect may have caused has happened by now.
    let _ = h.next_for(&ep, h.options.quiet).await;
    h.update(&ep, None, "cfg-2", &json!({"v": 2})).await?;
    h.expect_nothing(&ep).await
}

async fn con_push(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.set_config(&ep, None, "cfg-1", &json!({"v": 1}));
    h.connectivity(&ep, true).await?;
    let push = h.expect_push(&ep).await?;
    expect_status(&push, 200)?;
    expect_payload(&push, &json!({"configId": "cfg-1", "config": {"v": 1}}))
}

async fn con_offline_latest(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.set_config(&ep, None, "cfg-1", &json!({"n": 1}));
    h.connectivity(&ep, true).await?;
    h.observe(&ep, "/config/json", 1).await?;
    h.report_applied(&ep, "/applied/json", "cfg-1").await?;
    // The connect may have pushed cfg-1 before the request: not this case's rule.
    while h.next_for(&ep, h.options.quiet).await.is_some() {}
    h.connectivity(&ep, false).await?;
    tokio::time::sleep(h.options.quiet).await;
    for n in 2..=4 {
        h.update(&ep, None, &format!("cfg-{n}"), &json!({"n": n}))
            .await?;
    }
    if let Some(d) = h.next_for(&ep, h.options.quiet).await {
        return Err(format!("a push to an offline endpoint: {d:?}"));
    }
    h.connectivity(&ep, true).await?;
    let push = h.expect_push(&ep).await?;
    expect_payload(&push, &json!({"configId": "cfg-4", "config": {"n": 4}}))?;
    h.expect_nothing(&ep).await
}

async fn named(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.set_config(&ep, None, "main-1", &json!({"kind": "main"}));
    h.set_config(&ep, Some("network"), "net-1", &json!({"wifi": "a"}));
    let d = h.observe(&ep, "/config/json/network", 1).await?;
    expect_payload(&d, &json!({"configId": "net-1", "config": {"wifi": "a"}}))?;
    if d.resource_path != "/config/json/network" {
        return Err(format!("answer on resource path {:?}", d.resource_path));
    }
    let asked = h.requests_for(&ep);
    if !asked
        .iter()
        .any(|r| r.config_name.as_deref() == Some("network"))
    {
        return Err(format!(
            "no 6/CDTP request with configName \"network\" (requests: {:?})",
            asked
                .iter()
                .map(|r| r.config_name.as_deref().map(str::to_owned))
                .collect::<Vec<_>>()
        ));
    }
    let d = h.observe(&ep, "/config/json", 2).await?;
    expect_payload(
        &d,
        &json!({"configId": "main-1", "config": {"kind": "main"}}),
    )?;
    h.report_applied(&ep, "/applied/json", "main-1").await?;
    h.report_applied(&ep, "/applied/json/network", "net-1")
        .await?;
    h.update(&ep, Some("network"), "net-2", &json!({"wifi": "b"}))
        .await?;
    let push = h.expect_push(&ep).await?;
    if push.resource_path != "/config/json/network" {
        return Err(format!(
            "the network change was pushed on {:?}",
            push.resource_path
        ));
    }
    expect_payload(
        &push,
        &json!({"configId": "net-2", "config": {"wifi": "b"}}),
    )?;
    h.expect_nothing(&ep).await
}

async fn applied(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.set_config(&ep, None, "cfg-1", &json!({}));
    h.observe(&ep, "/config/json", 1).await?;
    h.send(&ep, "/applied/json", Some(2), &json!({"configId": "cfg-1"}))
        .await?;
    let a = h.expect_applied(&ep).await?;
    if a.config_id != "cfg-1" || a.status_code != 200 {
        return Err(format!(
            "expected cfg-1 with status 200, got {:?} with {}",
            a.config_id, a.status_code
        ));
    }
    let d = h.expect_reply(&ep, 2).await?;
    if !(200..300).contains(&d.status_code) {
        return Err(format!(
            "the applied report (requestId 2) was answered {}",
            d.status_code
        ));
    }
    Ok(())
}

async fn rejected(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.set_config(&ep, None, "cfg-1", &json!({}));
    h.observe(&ep, "/config/json", 1).await?;
    h.send(
        &ep,
        "/applied/json",
        None,
        &json!({"configId": "cfg-1", "statusCode": 400, "reasonPhrase": "bad sampling"}),
    )
    .await?;
    let a = h.expect_applied(&ep).await?;
    if a.config_id != "cfg-1"
        || a.status_code != 400
        || a.reason_phrase.as_deref() != Some("bad sampling")
    {
        return Err(format!(
            "expected cfg-1, 400, \"bad sampling\"; got {:?}, {}, {:?}",
            a.config_id, a.status_code, a.reason_phrase
        ));
    }
    Ok(())
}

async fn rejected_not_pushed(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.set_config(&ep, None, "cfg-1", &json!({"v": 1}));
    h.observe(&ep, "/config/json", 1).await?;
    h.report_applied(&ep, "/applied/json", "cfg-1").await?;
    h.update(&ep, None, "cfg-2", &json!({"v": 2})).await?;
    expect_payload(
        &h.expect_push(&ep).await?,
        &json!({"configId": "cfg-2", "config": {"v": 2}}),
    )?;
    h.send(
        &ep,
        "/applied/json",
        None,
        &json!({"configId": "cfg-2", "statusCode": 422, "reasonPhrase": "no"}),
    )
    .await?;
    h.expect_applied(&ep).await?;
    // The same configuration announced again: not pushed again.
    h.update(&ep, None, "cfg-2", &json!({"v": 2})).await?;
    h.expect_nothing(&ep).await
}

async fn old_writer(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.set_config(&ep, None, "cfg-1", &json!({"old": true}));
    let mut datum = h.client_data(&ep, "/config/json", Some(1), b"{}").to_vec();
    // `configName` is the last field, a union whose null branch is one zero
    // byte: without it the datum is what a writer of the older schema sends.
    if datum.pop() != Some(0) {
        return Err("the kit's ClientData did not end with a null configName".into());
    }
    h.send_datum(datum).await?;
    let d = h.expect_reply(&ep, 1).await?;
    expect_status(&d, 200)?;
    expect_payload(&d, &json!({"configId": "cfg-1", "config": {"old": true}}))
}
