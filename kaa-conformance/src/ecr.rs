//! The configuration provider (ECR) under test: the kit plays its consumer (a
//! CMX: 6/CDTP requests out, `ConfigResponse` and `endpoint.config.updated` in)
//! over the bus, and an operator of its REST API over HTTP, and checks what the
//! provider answers and announces.
//!
//! What the kit needs from the provider:
//!
//! - its service instance name ([`EcrTarget::provider`]): the kit sends
//!   `ConfigRequest`s to `kaa.v1.service.<provider>.cdtp.request` and listens to
//!   `kaa.v1.events.<provider>.endpoint.config.updated`;
//! - the base URL of its REST API ([`EcrTarget::http`], the kit appends
//!   `/api/v1`) with the routes Kaa's ECR has (kaa-notes, "ECR"), and a bearer
//!   token with write access if it asks for one;
//! - an app version the kit may write to ([`EcrTarget::app_version`]) that has
//!   **no default configuration** (the kit writes endpoint configurations only,
//!   for endpoint IDs unique to the run, and deletes none it did not write; with a
//!   default for the app version, the absent-configuration cases fail).
//!
//! Optionally the CMX instance whose `endpoint.config.applied` events the provider
//! records ([`EcrTarget::cmx`]): the kit then publishes one as that CMX and looks
//! for it in `/statuses`.
//!
//! Which cases are required: the 6/CDTP RFC, and Kaa's ECR REST API and 6/CDTP
//! behaviour as kaa-notes documents them (the kit needs the REST API to make the
//! writes it checks the announcements of). Extensions: what only kaa-rs documents
//! (ETag on GET, `configName` in `ConfigUpdated`, the "absent" announcement after a
//! delete, identical content keeping its ID, the status history).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kaa_bus::{Bus, BusError};
use kaa_cdtp::{ConfigAnswer, ConfigApplied, ConfigRequest, ConfigResponse, ConfigUpdated};
use kaa_ism::avro::{Decode, Encode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cmx::SuiteOptions;
use crate::report::{CaseInfo, CaseResult, Outcome, Report, run_cases};

/// The provider to check and how to reach it.
#[derive(Debug, Clone)]
pub struct EcrTarget {
    /// The provider's service instance name (`ecr` in Kaa's defaults).
    pub provider: String,
    /// The base URL of its REST API, e.g. `http://127.0.0.1:8080` (the kit
    /// appends `/api/v1/…`).
    pub http: String,
    /// A bearer token with read-write access, when the API asks for one.
    pub token: Option<String>,
    /// The CMX instance whose `endpoint.config.applied` events the provider
    /// records; the status-history case is skipped without it.
    pub cmx: Option<String>,
    /// The app version the kit writes endpoint configurations to (it must have no
    /// default configuration).
    pub app_version: String,
    /// The replica ID the kit's consumer uses (its `replyTo` is
    /// `kaa.v1.replica.<id>.cdtp.response`).
    pub consumer_replica: String,
}

impl EcrTarget {
    /// A target with app version `conformance-v1`, no token and no CMX.
    pub fn new(provider: impl Into<String>, http: impl Into<String>) -> Self {
        EcrTarget {
            provider: provider.into(),
            http: http.into(),
            token: None,
            cmx: None,
            app_version: "conformance-v1".into(),
            consumer_replica: "kaa-conformance-cmx-1".into(),
        }
    }
}

/// Every case of the ECR suite, in the order they run.
pub const CASES: &[CaseInfo] = &[
    CaseInfo {
        id: "ECR-REST-PUT-1",
        title: "PUT stores the raw JSON: 200, ETag \"<configId>\", {configId, config as JSON text}",
        cites: "kaa-notes ECR REST API: PUT /endpoints/{id}/app-versions/{v}, upsert, ETag",
        extension: false,
    },
    CaseInfo {
        id: "ECR-REST-ETAG-1",
        title: "GET answers the stored configuration with ETag \"<configId>\"",
        cites: "kaa-rs ECR API docs (every configuration response carries its ETag)",
        extension: true,
    },
    CaseInfo {
        id: "ECR-REST-IFM-1",
        title: "If-Match: the current configId writes; a stale one is 412 {message}, nothing stored or announced",
        cites: "kaa-notes ECR REST API: If-Match optimistic locking, 412 changes nothing",
        extension: false,
    },
    CaseInfo {
        id: "ECR-REST-404-1",
        title: "GET of a configuration that is not there: 404 with {\"message\"}",
        cites: "kaa-notes ECR REST API: errors are {\"message\"}; RFC 9110 404",
        extension: false,
    },
    CaseInfo {
        id: "ECR-REST-ERR-1",
        title: "a PUT body that is not JSON: 400 with {\"message\"}, nothing stored",
        cites: "kaa-notes ECR REST API: PUT body is JSON, errors are {\"message\"}",
        extension: false,
    },
    CaseInfo {
        id: "ECR-REST-DEL-1",
        title: "DELETE: 204, then GET 404 and 6/CDTP answers absent",
        cites: "kaa-notes ECR REST API: DELETE is 204; 7/CMP Absent configuration",
        extension: false,
    },
    CaseInfo {
        id: "ECR-REST-IDEM-1",
        title: "PUT of identical content keeps the configId",
        cites: "kaa-notes Configuration model (storing identical content SHOULD not create a new version)",
        extension: true,
    },
    CaseInfo {
        id: "CDTP-REQ-1",
        title: "a request without configId gets the latest configuration written",
        cites: "6/CDTP ConfigRequest.configId: if absent, a non-error response MUST hold the latest configuration data",
        extension: false,
    },
    CaseInfo {
        id: "CDTP-REQ-2",
        title: "a request with the current configId is answered unchanged (no configId, no content)",
        cites: "6/CDTP ConfigResponse configId/content; kaa-notes ECR (\"unchanged\")",
        extension: false,
    },
    CaseInfo {
        id: "CDTP-REQ-3",
        title: "a request with an older configId gets the current configuration",
        cites: "6/CDTP Configuration pull; ConfigResponse",
        extension: false,
    },
    CaseInfo {
        id: "CDTP-REQ-4",
        title: "no configuration: 404, or 2xx with configId \"\" and content null",
        cites: "6/CDTP Configuration response MUST be sent; 7/CMP Absent configuration; kaa-cdtp ABSENT_CONFIG_ID",
        extension: false,
    },
    CaseInfo {
        id: "CDTP-REQ-5",
        title: "configName selects the named configuration; none means the default name",
        cites: "6/CDTP ConfigRequest.configName; kaa-notes ECR REST API ?name=",
        extension: false,
    },
    CaseInfo {
        id: "CDTP-REQ-6",
        title: "an unknown app version: an error with a reason, or absent; never another app version's configuration",
        cites: "6/CDTP ConfigRequest.appVersionName; Configuration response MUST be sent",
        extension: false,
    },
    CaseInfo {
        id: "CDTP-REQ-7",
        title: "an undecodable request: no answer or a 4xx with a reason, and the provider keeps answering",
        cites: "6/CDTP ConfigRequest schema (Avro); 3/ISM",
        extension: false,
    },
    CaseInfo {
        id: "CDTP-REQ-8",
        title: "concurrent requests: each answer carries its request's correlationId, endpointId and appVersionName",
        cites: "3/ISM correlationId; 6/CDTP ConfigResponse",
        extension: false,
    },
    CaseInfo {
        id: "CDTP-REQ-9",
        title: "the answer goes to the request's replyTo, whatever subject it names",
        cites: "6/CDTP Configuration response: MUST publish to the subject in replyTo",
        extension: false,
    },
    CaseInfo {
        id: "CDTP-UPD-1",
        title: "a REST write is announced: endpoint.config.updated with its configId, content, endpoint, app version",
        cites: "6/CDTP Configuration updated; kaa-notes ECR (broadcasts after an endpoint PUT)",
        extension: false,
    },
    CaseInfo {
        id: "CDTP-UPD-2",
        title: "an announced configuration is visible: 6/CDTP and REST answer it as soon as it is announced",
        cites: "6/CDTP Configuration updated (configuration data got updated: announced after the update)",
        extension: false,
    },
    CaseInfo {
        id: "CDTP-UPD-3",
        title: "a burst of writes: announced in write order, the last one last, never an older after a newer",
        cites: "6/CDTP Configuration updated; kaa-notes (devices get the latest configuration)",
        extension: false,
    },
    CaseInfo {
        id: "CDTP-UPD-4",
        title: "a named configuration's announcement carries its configName",
        cites: "kaa-rs extension: ConfigUpdated.configName (kaa-cdtp named-configuration extension)",
        extension: true,
    },
    CaseInfo {
        id: "CDTP-UPD-5",
        title: "a deleted configuration is announced as absent (configId \"\", content null)",
        cites: "kaa-rs ECR bus docs (an effective configuration that disappears is announced absent)",
        extension: true,
    },
    CaseInfo {
        id: "ECR-STAT-1",
        title: "a ConfigApplied from the CMX lands in /statuses with its status code and reason",
        cites: "6/CDTP Configuration applied (providers MAY track statuses); kaa-notes ECR GET /statuses",
        extension: true,
    },
];

/// An HTTP answer of the provider's REST API.
#[derive(Debug)]
struct HttpAnswer {
    status: u16,
    etag: Option<String>,
    body: String,
}

impl HttpAnswer {
    fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// The ETag's strong value without its quotes.
    fn etag_id(&self) -> Option<&str> {
        let e = self.etag.as_deref()?;
        e.strip_prefix('"')?.strip_suffix('"')
    }

    fn expect_status(&self, what: &str, want: u16) -> Result<(), String> {
        if self.status == want {
            Ok(())
        } else {
            Err(format!(
                "{what}: expected HTTP {want}, got {} with body {}",
                self.status,
                clip(&self.body)
            ))
        }
    }

    /// A 4xx with `{"message": "<not empty>"}`.
    fn expect_error(&self, what: &str, want: u16) -> Result<(), String> {
        self.expect_status(what, want)?;
        match self.json().as_ref().and_then(|v| v.get("message")) {
            Some(Value::String(m)) if !m.is_empty() => Ok(()),
            _ => Err(format!(
                "{what}: HTTP {want} without a {{\"message\"}} body: {}",
                clip(&self.body)
            )),
        }
    }
}

fn clip(text: &str) -> String {
    if text.len() <= 300 {
        text.to_owned()
    } else {
        let mut end = 300;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    }
}

/// The parts the kit plays, running on the bus.
struct Harness {
    bus: Arc<dyn Bus>,
    target: EcrTarget,
    options: SuiteOptions,
    http: reqwest::Client,
    base: String,
    tag: String,
    responses: mpsc::UnboundedReceiver<ConfigResponse<'static>>,
    /// Answers on the kit's other reply subject (CDTP-REQ-9).
    other_responses: mpsc::UnboundedReceiver<ConfigResponse<'static>>,
    other_reply_to: String,
    updates: mpsc::UnboundedReceiver<ConfigUpdated<'static>>,
    /// Answers that came for a correlation ID nobody was waiting for yet.
    early: HashMap<String, ConfigResponse<'static>>,
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

fn spawn_decoder<T: Send + 'static>(
    mut sub: kaa_bus::Subscription,
    decode: impl Fn(&[u8]) -> Option<T> + Send + 'static,
) -> (JoinHandle<()>, mpsc::UnboundedReceiver<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(t) = decode(&m.payload)
                && tx.send(t).is_err()
            {
                return;
            }
        }
    });
    (task, rx)
}

impl Harness {
    async fn start(
        bus: Arc<dyn Bus>,
        target: &EcrTarget,
        options: &SuiteOptions,
    ) -> Result<Self, BusError> {
        let tag = format!(
            "ecrconf{}x{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() % 1_000_000)
                .unwrap_or(0)
        );
        let mut tasks = Vec::new();
        let response_subject = kaa_cdtp::subject::response_subject(&target.consumer_replica)
            .map_err(subject_error)?
            .to_string();
        let keep = {
            let tag = tag.clone();
            move |p: &[u8]| {
                let r = ConfigResponse::decode(p).ok()?;
                // Ours, or an answer to a datum whose correlation ID could not be read.
                (r.correlation_id.starts_with(&tag) || r.correlation_id.is_empty())
                    .then(|| r.into_owned())
            }
        };
        let (task, responses) =
            spawn_decoder(bus.subscribe(&response_subject, None).await?, keep.clone());
        tasks.push(task);
        let other_reply_to = format!("kaa-conformance.{tag}.inbox");
        let (task, other_responses) =
            spawn_decoder(bus.subscribe(&other_reply_to, None).await?, keep);
        tasks.push(task);
        let updated_subject = kaa_cdtp::subject::config_updated_subject(&target.provider)
            .map_err(subject_error)?
            .to_string();
        let (task, updates) = {
            let tag = tag.clone();
            spawn_decoder(bus.subscribe(&updated_subject, None).await?, move |p| {
                let u = ConfigUpdated::decode(p).ok()?;
                u.endpoint_id.starts_with(&tag).then(|| u.into_owned())
            })
        };
        tasks.push(task);
        kaa_bus::subscription_barrier(bus.as_ref(), Duration::from_secs(5)).await?;
        let http = reqwest::Client::new();
        Ok(Harness {
            bus,
            base: format!("{}/api/v1", target.http.trim_end_matches('/')),
            target: target.clone(),
            options: options.clone(),
            http,
            tag,
            responses,
            other_responses,
            other_reply_to,
            updates,
            early: HashMap::new(),
            tasks,
            next: 0,
        })
    }

    fn fresh(&mut self, what: &str) -> String {
        self.next += 1;
        format!("{}-{what}{}", self.tag, self.next)
    }

    /// A fresh endpoint ID for one case.
    fn endpoint(&mut self) -> String {
        self.fresh("ep")
    }

    // ---- REST ----

    fn config_url(&self, endpoint: &str, app_version: &str, name: Option<&str>) -> String {
        let mut url = format!(
            "{}/endpoints/{endpoint}/app-versions/{app_version}",
            self.base
        );
        if let Some(n) = name {
            url.push_str("?name=");
            url.push_str(n);
        }
        url
    }

    fn http_request(
        &self,
        method: reqwest::Method,
        url: &str,
        if_match: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, url)
            .timeout(self.options.wait.max(Duration::from_secs(1)));
        if let Some(token) = &self.target.token {
            request = request.bearer_auth(token);
        }
        if let Some(tag) = if_match {
            request = request.header("If-Match", format!("\"{tag}\""));
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body);
        }
        request
    }

    async fn http(
        &self,
        method: reqwest::Method,
        url: &str,
        if_match: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<HttpAnswer, String> {
        let what = format!("{method} {url}");
        send_http(what, self.http_request(method, url, if_match, body)).await
    }

    async fn put_raw(
        &self,
        endpoint: &str,
        name: Option<&str>,
        body: Vec<u8>,
        if_match: Option<&str>,
    ) -> Result<HttpAnswer, String> {
        let url = self.config_url(endpoint, &self.target.app_version, name);
        self.http(reqwest::Method::PUT, &url, if_match, Some(body))
            .await
    }

    async fn get(&self, endpoint: &str, name: Option<&str>) -> Result<HttpAnswer, String> {
        let url = self.config_url(endpoint, &self.target.app_version, name);
        self.http(reqwest::Method::GET, &url, None, None).await
    }

    async fn delete(&self, endpoint: &str, name: Option<&str>) -> Result<HttpAnswer, String> {
        let url = self.config_url(endpoint, &self.target.app_version, name);
        self.http(reqwest::Method::DELETE, &url, None, None).await
    }

    /// PUTs `content` and returns the new configId (the body's `configId`, which
    /// must agree with the ETag when there is one).
    async fn write_if(
        &self,
        endpoint: &str,
        name: Option<&str>,
        content: &Value,
        if_match: Option<&str>,
    ) -> Result<String, String> {
        let answer = self
            .put_raw(endpoint, name, content.to_string().into_bytes(), if_match)
            .await?;
        answer.expect_status("PUT", 200)?;
        let id = answer
            .json()
            .and_then(|v| v.get("configId").and_then(Value::as_str).map(str::to_owned))
            .ok_or_else(|| format!("PUT: no configId in {}", clip(&answer.body)))?;
        if let Some(etag) = answer.etag_id()
            && etag != id
        {
            return Err(format!("PUT: ETag {etag:?} but configId {id:?}"));
        }
        Ok(id)
    }

    async fn write(
        &self,
        endpoint: &str,
        name: Option<&str>,
        content: &Value,
    ) -> Result<String, String> {
        self.write_if(endpoint, name, content, None).await
    }

    // ---- 6/CDTP ----

    fn request(
        &mut self,
        endpoint: &str,
        app_version: &str,
        config_id: Option<&str>,
        name: Option<&str>,
    ) -> ConfigRequest<'static> {
        ConfigRequest {
            correlation_id: self.fresh("c").into(),
            timestamp: kaa_now(),
            timeout: i64::try_from(self.options.wait.as_millis()).unwrap_or(i64::MAX),
            app_version_name: app_version.to_owned().into(),
            endpoint_id: endpoint.to_owned().into(),
            config_id: config_id.map(|c| c.to_owned().into()),
            config_name: name.map(|n| n.to_owned().into()),
        }
    }

    async fn send_datum(&self, datum: Vec<u8>, reply_to: Option<&str>) -> Result<(), String> {
        let subject = kaa_cdtp::subject::request_subject(&self.target.provider)
            .map_err(|e| e.to_string())?
            .to_string();
        let default_reply = kaa_cdtp::subject::response_subject(&self.target.consumer_replica)
            .map_err(|e| e.to_string())?
            .to_string();
        self.bus
            .publish_message(
                &subject,
                Some(reply_to.unwrap_or(&default_reply)),
                Bytes::from(datum),
            )
            .await
            .map_err(|e| format!("publishing to {subject}: {e}"))
    }

    /// The answer with `correlation_id`, within the wait time.
    async fn answer_to(&mut self, correlation_id: &str) -> Result<ConfigResponse<'static>, String> {
        if let Some(r) = self.early.remove(correlation_id) {
            return Ok(r);
        }
        let deadline = tokio::time::Instant::now() + self.options.wait;
        loop {
            match tokio::time::timeout_at(deadline, self.responses.recv()).await {
                Ok(Some(r)) if r.correlation_id == correlation_id => return Ok(r),
                Ok(Some(r)) => {
                    self.early.insert(r.correlation_id.to_string(), r);
                }
                Ok(None) | Err(_) => {
                    return Err(format!(
                        "no ConfigResponse with correlationId {correlation_id} within {:?}",
                        self.options.wait
                    ));
                }
            }
        }
    }

    /// Sends a request and waits for its answer.
    async fn cdtp(
        &mut self,
        endpoint: &str,
        config_id: Option<&str>,
        name: Option<&str>,
    ) -> Result<ConfigResponse<'static>, String> {
        let app_version = self.target.app_version.clone();
        self.cdtp_for(endpoint, &app_version, config_id, name).await
    }

    async fn cdtp_for(
        &mut self,
        endpoint: &str,
        app_version: &str,
        config_id: Option<&str>,
        name: Option<&str>,
    ) -> Result<ConfigResponse<'static>, String> {
        let request = self.request(endpoint, app_version, config_id, name);
        self.send_datum(request.to_vec(), None).await?;
        self.answer_to(&request.correlation_id).await
    }

    // ---- endpoint.config.updated ----

    /// The next announcement for `endpoint`, within the wait time.
    async fn next_update(
        &mut self,
        endpoint: &str,
        within: Duration,
    ) -> Option<ConfigUpdated<'static>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.updates.recv()).await {
                Ok(Some(u)) if u.endpoint_id == endpoint => return Some(u),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Announcements for `endpoint` until one names `config_id` (returned last).
    async fn updates_until(
        &mut self,
        endpoint: &str,
        config_id: &str,
    ) -> Result<Vec<ConfigUpdated<'static>>, String> {
        let deadline = Instant::now() + self.options.wait;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_update(endpoint, left).await {
                Some(u) => {
                    let done = u.config_id == config_id;
                    seen.push(u);
                    if done {
                        return Ok(seen);
                    }
                }
                None => {
                    return Err(format!(
                        "no endpoint.config.updated for {endpoint} with configId {config_id:?} within {:?} (announced: {:?})",
                        self.options.wait,
                        ids(&seen)
                    ));
                }
            }
        }
    }

    /// Announcements for `endpoint` during the quiet time.
    async fn updates_quiet(&mut self, endpoint: &str) -> Vec<ConfigUpdated<'static>> {
        let deadline = Instant::now() + self.options.quiet;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_update(endpoint, left).await {
                Some(u) => seen.push(u),
                None => return seen,
            }
        }
    }
}

async fn send_http(what: String, request: reqwest::RequestBuilder) -> Result<HttpAnswer, String> {
    let response = request
        .send()
        .await
        .map_err(|e| format!("{what}: {}", with_sources(&e)))?;
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("ETag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .text()
        .await
        .map_err(|e| format!("{what}: reading the body: {e}"))?;
    Ok(HttpAnswer { status, etag, body })
}

/// An error with its causes: reqwest's own message does not say "connection
/// refused".
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn ids(updates: &[ConfigUpdated<'_>]) -> Vec<String> {
    updates.iter().map(|u| u.config_id.to_string()).collect()
}

fn kaa_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn describe(r: &ConfigResponse<'_>) -> String {
    format!(
        "status {} ({:?}), configId {:?}, content {:?}",
        r.status_code,
        r.reason_phrase,
        r.config_id,
        r.content.as_deref().map(String::from_utf8_lossy)
    )
}

fn json_of(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice(bytes).ok()
}

/// The answer is the configuration `id` with `content`.
fn expect_config(
    r: &ConfigResponse<'_>,
    asked: Option<&str>,
    id: &str,
    content: &Value,
) -> Result<(), String> {
    match r.read(asked) {
        ConfigAnswer::Config {
            config_id,
            content: got,
        } if config_id == id => {
            if json_of(got).as_ref() == Some(content) {
                Ok(())
            } else {
                Err(format!(
                    "configId {id:?} with content {:?}, expected {content}",
                    String::from_utf8_lossy(got)
                ))
            }
        }
        _ => Err(format!(
            "expected configuration {id:?} ({content}), got {}",
            describe(r)
        )),
    }
}

fn expect_absent(r: &ConfigResponse<'_>) -> Result<(), String> {
    match r.read(None) {
        ConfigAnswer::Absent => Ok(()),
        ConfigAnswer::Config {
            config_id: "",
            content,
        } if json_of(content) == Some(Value::Null) => Ok(()),
        _ => Err(format!(
            "expected \"no configuration\" (404, or configId \"\" with content null), got {}",
            describe(r)
        )),
    }
}

fn expect_update(
    u: &ConfigUpdated<'_>,
    app_version: &str,
    id: &str,
    content: &Value,
) -> Result<(), String> {
    if u.config_id != id {
        return Err(format!(
            "announced configId {:?}, expected {id:?}",
            u.config_id
        ));
    }
    if u.app_version_name != app_version {
        return Err(format!(
            "announced for app version {:?}, expected {app_version:?}",
            u.app_version_name
        ));
    }
    if !kaa_cdtp::answer::is_json_content_type(&u.content_type) {
        return Err(format!("announced content type {:?}", u.content_type));
    }
    if json_of(&u.content).as_ref() != Some(content) {
        return Err(format!(
            "announced content {:?}, expected {content}",
            String::from_utf8_lossy(&u.content)
        ));
    }
    Ok(())
}

/// Runs the ECR suite against the provider named in `target` over `bus` (and its
/// REST API over HTTP), calling `progress` after each case.
pub async fn run_ecr_suite(
    bus: Arc<dyn Bus>,
    target: &EcrTarget,
    options: &SuiteOptions,
    progress: impl FnMut(&CaseResult),
) -> Result<Report, BusError> {
    let mut h = Harness::start(bus, target, options).await?;
    Ok(run_cases(
        format!("ecr {}", target.provider),
        CASES,
        &mut h,
        |case| {
            options.skip(case).or_else(|| {
                (case.id == "ECR-STAT-1" && target.cmx.is_none())
                    .then(|| Outcome::Skipped("no CMX instance given (--cmx)".into()))
            })
        },
        run_case,
        |h| {
            while h.responses.try_recv().is_ok() {}
            while h.other_responses.try_recv().is_ok() {}
            while h.updates.try_recv().is_ok() {}
            h.early.clear();
        },
        progress,
    )
    .await)
}

async fn run_case(id: &str, h: &mut Harness) -> Result<(), String> {
    match id {
        "ECR-REST-PUT-1" => rest_put(h).await,
        "ECR-REST-ETAG-1" => rest_etag(h).await,
        "ECR-REST-IFM-1" => rest_if_match(h).await,
        "ECR-REST-404-1" => rest_404(h).await,
        "ECR-REST-ERR-1" => rest_malformed(h).await,
        "ECR-REST-DEL-1" => rest_delete(h).await,
        "ECR-REST-IDEM-1" => rest_identical(h).await,
        "CDTP-REQ-1" => req_latest(h).await,
        "CDTP-REQ-2" => req_unchanged(h).await,
        "CDTP-REQ-3" => req_older(h).await,
        "CDTP-REQ-4" => req_absent(h).await,
        "CDTP-REQ-5" => req_named(h).await,
        "CDTP-REQ-6" => req_unknown_app_version(h).await,
        "CDTP-REQ-7" => req_malformed(h).await,
        "CDTP-REQ-8" => req_correlation(h).await,
        "CDTP-REQ-9" => req_reply_to(h).await,
        "CDTP-UPD-1" => upd_announced(h).await,
        "CDTP-UPD-2" => upd_visible(h).await,
        "CDTP-UPD-3" => upd_order(h).await,
        "CDTP-UPD-4" => upd_named(h).await,
        "CDTP-UPD-5" => upd_deleted(h).await,
        "ECR-STAT-1" => status_history(h).await,
        other => Err(format!("unknown case {other}")),
    }
}

async fn rest_put(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    let content = json!({"sampling": 200, "labels": ["a", "b"]});
    let answer = h
        .put_raw(&ep, None, content.to_string().into_bytes(), None)
        .await?;
    answer.expect_status("PUT", 200)?;
    let body = answer
        .json()
        .ok_or_else(|| format!("PUT: the body is not JSON: {}", clip(&answer.body)))?;
    let id = body
        .get("configId")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| format!("PUT: no configId in {body}"))?;
    match answer.etag_id() {
        Some(etag) if etag == id => {}
        _ => {
            return Err(format!(
                "PUT: ETag {:?}, expected \"\\\"{id}\\\"\"",
                answer.etag
            ));
        }
    }
    let stored = body
        .get("config")
        .and_then(Value::as_str)
        .and_then(|text| serde_json::from_str::<Value>(text).ok());
    if stored.as_ref() != Some(&content) {
        return Err(format!(
            "PUT: \"config\" should be the configuration as JSON text, got {:?}",
            body.get("config")
        ));
    }
    Ok(())
}

async fn rest_etag(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    let content = json!({"etag": true});
    let id = h.write(&ep, None, &content).await?;
    let answer = h.get(&ep, None).await?;
    answer.expect_status("GET", 200)?;
    match answer.etag_id() {
        Some(etag) if etag == id => {}
        _ => {
            return Err(format!(
                "GET: ETag {:?}, expected the configId {id:?}",
                answer.etag
            ));
        }
    }
    let body = answer.json().unwrap_or(Value::Null);
    if body.get("configId").and_then(Value::as_str) != Some(id.as_str()) {
        return Err(format!(
            "GET: configId {:?}, expected {id:?}",
            body.get("configId")
        ));
    }
    Ok(())
}

async fn rest_if_match(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    let a = h.write(&ep, None, &json!({"v": "a"})).await?;
    let b = h
        .write_if(&ep, None, &json!({"v": "b"}), Some(&a))
        .await
        .map_err(|e| format!("If-Match with the current configId: {e}"))?;
    h.updates_until(&ep, &b).await?;
    let answer = h
        .put_raw(
            &ep,
            None,
            json!({"v": "c"}).to_string().into_bytes(),
            Some(&a),
        )
        .await?;
    answer.expect_error("PUT with If-Match of a replaced configId", 412)?;
    let current = h.get(&ep, None).await?;
    current.expect_status("GET after the 412", 200)?;
    let now = current
        .json()
        .and_then(|v| v.get("configId").and_then(Value::as_str).map(str::to_owned));
    if now.as_deref() != Some(b.as_str()) {
        return Err(format!(
            "after the 412 the configuration is {now:?}, expected {b:?}"
        ));
    }
    let r = h.cdtp(&ep, None, None).await?;
    expect_config(&r, None, &b, &json!({"v": "b"}))
        .map_err(|e| format!("6/CDTP after the 412: {e}"))?;
    let refused = json!({"v": "c"});
    let late = h.updates_quiet(&ep).await;
    if let Some(u) = late
        .iter()
        .find(|u| json_of(&u.content).as_ref() == Some(&refused))
    {
        return Err(format!(
            "the refused write was announced as configId {:?}",
            u.config_id
        ));
    }
    Ok(())
}

async fn rest_404(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.get(&ep, None)
        .await?
        .expect_error("GET of a configuration never written", 404)
}

async fn rest_malformed(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    let answer = h.put_raw(&ep, None, b"{\"v\": ".to_vec(), None).await?;
    answer.expect_error("PUT of a body that is not JSON", 400)?;
    h.get(&ep, None)
        .await?
        .expect_error("GET after the refused PUT", 404)
}

async fn rest_delete(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.write(&ep, None, &json!({"gone": "soon"})).await?;
    h.delete(&ep, None).await?.expect_status("DELETE", 204)?;
    h.get(&ep, None)
        .await?
        .expect_error("GET after DELETE", 404)?;
    let r = h.cdtp(&ep, None, None).await?;
    expect_absent(&r).map_err(|e| format!("6/CDTP after DELETE: {e}"))
}

async fn rest_identical(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    let content = json!({"same": [1, 2, 3]});
    let first = h.write(&ep, None, &content).await?;
    let again = h.write(&ep, None, &content).await?;
    if first == again {
        Ok(())
    } else {
        Err(format!(
            "identical content stored as {first:?}, then {again:?}"
        ))
    }
}

async fn req_latest(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    h.write(&ep, None, &json!({"v": 1})).await?;
    let content = json!({"v": 2, "mode": "eco"});
    let id = h.write(&ep, None, &content).await?;
    let r = h.cdtp(&ep, None, None).await?;
    expect_config(&r, None, &id, &content)
}

async fn req_unchanged(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    let id = h.write(&ep, None, &json!({"v": 1})).await?;
    let r = h.cdtp(&ep, Some(&id), None).await?;
    match r.read(Some(&id)) {
        ConfigAnswer::Unchanged => Ok(()),
        _ => Err(format!(
            "asked with the current configId {id:?}: expected 2xx without configId and content, got {}",
            describe(&r)
        )),
    }
}

async fn req_older(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    let old = h.write(&ep, None, &json!({"v": "old"})).await?;
    let content = json!({"v": "new"});
    let id = h.write(&ep, None, &content).await?;
    if id == old {
        return Err(format!(
            "two different contents got the same configId {id:?}"
        ));
    }
    let r = h.cdtp(&ep, Some(&old), None).await?;
    expect_config(&r, Some(&old), &id, &content)
}

async fn req_absent(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    let r = h.cdtp(&ep, None, None).await?;
    expect_absent(&r)
}

async fn req_named(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    let main = json!({"kind": "main"});
    let net = json!({"wifi": "guest"});
    let main_id = h.write(&ep, None, &main).await?;
    let net_id = h.write(&ep, Some("network"), &net).await?;
    let r = h.cdtp(&ep, None, Some("network")).await?;
    expect_config(&r, None, &net_id, &net).map_err(|e| format!("configName \"network\": {e}"))?;
    let r = h.cdtp(&ep, None, None).await?;
    expect_config(&r, None, &main_id, &main).map_err(|e| format!("no configName: {e}"))?;
    let r = h.cdtp(&ep, None, Some("missing")).await?;
    expect_absent(&r).map_err(|e| format!("configName \"missing\" never written: {e}"))
}

async fn req_unknown_app_version(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    let id = h.write(&ep, None, &json!({"app": "known"})).await?;
    let unknown = format!("{}-unknown-app", h.tag);
    let r = h.cdtp_for(&ep, &unknown, None, None).await?;
    match r.read(None) {
        ConfigAnswer::Absent => Ok(()),
        ConfigAnswer::Config {
            config_id: "",
            content,
        } if json_of(content) == Some(Value::Null) => Ok(()),
        ConfigAnswer::Error {
            status_code: 400..=499,
            reason: Some(reason),
        } if !reason.is_empty() => Ok(()),
        ConfigAnswer::Config { config_id, .. } if config_id == id => Err(format!(
            "app version {unknown:?} was answered with the configuration of app version {:?}",
            h.target.app_version
        )),
        _ => Err(format!(
            "expected a 4xx with a reason or \"no configuration\", got {}",
            describe(&r)
        )),
    }
}

async fn req_malformed(h: &mut Harness) -> Result<(), String> {
    // A long negative "string length" for correlationId: no Avro reader can take it.
    h.send_datum(vec![0x01, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x42], None)
        .await?;
    let deadline = tokio::time::Instant::now() + h.options.quiet;
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline, h.responses.recv()).await {
        if r.correlation_id.is_empty() {
            if !(400..500).contains(&r.status_code)
                || r.reason_phrase.as_deref().is_none_or(str::is_empty)
            {
                return Err(format!(
                    "an undecodable request was answered with {}",
                    describe(&r)
                ));
            }
        } else {
            h.early.insert(r.correlation_id.to_string(), r);
        }
    }
    let ep = h.endpoint();
    let content = json!({"still": "here"});
    let id = h.write(&ep, None, &content).await?;
    let r = h
        .cdtp(&ep, None, None)
        .await
        .map_err(|e| format!("after the undecodable request: {e}"))?;
    expect_config(&r, None, &id, &content)
}

async fn req_correlation(h: &mut Harness) -> Result<(), String> {
    let app = h.target.app_version.clone();
    let mut sent = Vec::new();
    for n in 0..4 {
        let ep = h.endpoint();
        let content = json!({"n": n});
        let id = h.write(&ep, None, &content).await?;
        sent.push((ep, id, content));
    }
    let mut requests = Vec::new();
    for (ep, _, _) in &sent {
        let request = h.request(ep, &app, None, None);
        requests.push(request);
    }
    // All out before any answer is read.
    for request in &requests {
        h.send_datum(request.to_vec(), None).await?;
    }
    for (request, (ep, id, content)) in requests.iter().zip(&sent) {
        let r = h.answer_to(&request.correlation_id).await?;
        if r.endpoint_id != ep.as_str() || r.app_version_name != app {
            return Err(format!(
                "the answer to {} names endpoint {:?} and app version {:?}, expected {ep:?} and {app:?}",
                request.correlation_id, r.endpoint_id, r.app_version_name
            ));
        }
        expect_config(&r, None, id, content)
            .map_err(|e| format!("answer to {}: {e}", request.correlation_id))?;
    }
    Ok(())
}

async fn req_reply_to(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    let content = json!({"reply": "elsewhere"});
    let id = h.write(&ep, None, &content).await?;
    let app = h.target.app_version.clone();
    let request = h.request(&ep, &app, None, None);
    let other = h.other_reply_to.clone();
    h.send_datum(request.to_vec(), Some(&other)).await?;
    let deadline = tokio::time::Instant::now() + h.options.wait;
    loop {
        match tokio::time::timeout_at(deadline, h.other_responses.recv()).await {
            Ok(Some(r)) if r.correlation_id == request.correlation_id => {
                return expect_config(&r, None, &id, &content);
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => {
                return Err(format!(
                    "no answer on the replyTo {other:?} within {:?}",
                    h.options.wait
                ));
            }
        }
    }
}

async fn upd_announced(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    let content = json!({"announce": 1});
    let id = h.write(&ep, None, &content).await?;
    let seen = h.updates_until(&ep, &id).await?;
    let last = seen.last().ok_or("no announcement")?;
    expect_update(last, &h.target.app_version, &id, &content)?;
    if last.config_name.as_deref().is_some_and(|n| n != "default") {
        return Err(format!(
            "the unnamed configuration was announced with configName {:?}",
            last.config_name
        ));
    }
    Ok(())
}

async fn upd_visible(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    // The provider hears of the endpoint as a consumer's endpoint first.
    h.write(&ep, None, &json!({"seen": 0})).await?;
    h.cdtp(&ep, None, None).await?;
    h.updates_quiet(&ep).await;
    for n in 1..=3 {
        let content = json!({"seen": n});
        // The PUT runs on its own: the announcement may come before its answer,
        // and must even then be visible.
        let url = h.config_url(&ep, &h.target.app_version, None);
        let put = tokio::spawn(send_http(
            format!("PUT {url}"),
            h.http_request(
                reqwest::Method::PUT,
                &url,
                None,
                Some(content.to_string().into_bytes()),
            ),
        ));
        let announced = loop {
            match h.next_update(&ep, h.options.wait).await {
                Some(u) if json_of(&u.content).as_ref() == Some(&content) => break u,
                Some(_) => continue,
                None => {
                    put.abort();
                    return Err(format!(
                        "no endpoint.config.updated for {content} within {:?}",
                        h.options.wait
                    ));
                }
            }
        };
        let id = announced.config_id.to_string();
        let r = h.cdtp(&ep, None, None).await?;
        expect_config(&r, None, &id, &content)
            .map_err(|e| format!("6/CDTP request sent on the announcement of {id:?}: {e}"))?;
        let got = h.get(&ep, None).await?;
        got.expect_status("GET on the announcement", 200)?;
        let rest_id = got
            .json()
            .and_then(|v| v.get("configId").and_then(Value::as_str).map(str::to_owned));
        if rest_id.as_deref() != Some(id.as_str()) {
            return Err(format!(
                "GET on the announcement of {id:?} answered configId {rest_id:?}"
            ));
        }
        let answer = put.await.map_err(|e| format!("the PUT task: {e}"))??;
        answer.expect_status("PUT", 200)?;
        let put_id = answer
            .json()
            .and_then(|v| v.get("configId").and_then(Value::as_str).map(str::to_owned));
        if put_id.as_deref() != Some(id.as_str()) {
            return Err(format!(
                "PUT answered configId {put_id:?}, announced {id:?}"
            ));
        }
    }
    Ok(())
}

async fn upd_order(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    let mut written = Vec::new();
    for n in 0..6 {
        written.push(h.write(&ep, None, &json!({"burst": n})).await?);
    }
    let last = written.last().cloned().unwrap_or_default();
    let mut seen = h.updates_until(&ep, &last).await?;
    seen.extend(h.updates_quiet(&ep).await);
    let mut highest = 0;
    for u in &seen {
        let Some(index) = written.iter().position(|w| *w == u.config_id) else {
            return Err(format!(
                "announced {:?}, which was never written (written: {written:?})",
                u.config_id
            ));
        };
        if index < highest {
            return Err(format!(
                "{:?} (write {}) announced after {:?} (write {}): announcements {:?}",
                u.config_id,
                index + 1,
                written[highest],
                highest + 1,
                ids(&seen)
            ));
        }
        highest = index;
    }
    if seen.last().map(|u| u.config_id.as_ref()) != Some(last.as_str()) {
        return Err(format!(
            "the last announcement is not the last write {last:?}: {:?}",
            ids(&seen)
        ));
    }
    Ok(())
}

async fn upd_named(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    let content = json!({"wifi": "office"});
    let id = h.write(&ep, Some("network"), &content).await?;
    let seen = h.updates_until(&ep, &id).await?;
    let u = seen.last().ok_or("no announcement")?;
    expect_update(u, &h.target.app_version, &id, &content)?;
    if u.config_name.as_deref() != Some("network") {
        return Err(format!(
            "announced with configName {:?}, expected \"network\"",
            u.config_name
        ));
    }
    Ok(())
}

async fn upd_deleted(h: &mut Harness) -> Result<(), String> {
    let ep = h.endpoint();
    let id = h.write(&ep, None, &json!({"short": "lived"})).await?;
    h.updates_until(&ep, &id).await?;
    h.delete(&ep, None).await?.expect_status("DELETE", 204)?;
    let seen = h.updates_until(&ep, "").await?;
    let u = seen.last().ok_or("no announcement")?;
    expect_update(u, &h.target.app_version, "", &Value::Null)
}

async fn status_history(h: &mut Harness) -> Result<(), String> {
    let Some(cmx) = h.target.cmx.clone() else {
        return Err("no CMX instance given".into());
    };
    let ep = h.endpoint();
    let id = h.write(&ep, None, &json!({"status": "tracked"})).await?;
    let event = ConfigApplied {
        correlation_id: h.fresh("applied").into(),
        timestamp: kaa_now(),
        timeout: 0,
        app_version_name: h.target.app_version.clone().into(),
        endpoint_id: ep.clone().into(),
        config_id: id.clone().into(),
        originator_replica_id: Some(h.target.consumer_replica.clone().into()),
        status_code: 422,
        reason_phrase: Some("kaa-conformance rejects it".into()),
        config_name: None,
    };
    let subject = kaa_cdtp::subject::config_applied_subject(&cmx)
        .map_err(|e| e.to_string())?
        .to_string();
    h.bus
        .publish(&subject, Bytes::from(event.to_vec()))
        .await
        .map_err(|e| format!("publishing to {subject}: {e}"))?;
    let url = format!(
        "{}/statuses?endpointId={ep}&appVersionName={}",
        h.base, h.target.app_version
    );
    let deadline = Instant::now() + h.options.wait;
    loop {
        let answer = h.http(reqwest::Method::GET, &url, None, None).await?;
        answer.expect_status("GET /statuses", 200)?;
        let rows = answer
            .json()
            .and_then(|v| v.get("content").cloned())
            .and_then(|c| c.as_array().cloned())
            .unwrap_or_default();
        let found = rows.iter().any(|row| {
            row.get("configId").and_then(Value::as_str) == Some(id.as_str())
                && row.get("statusCode").and_then(Value::as_i64) == Some(422)
                && row.get("reasonPhrase").and_then(Value::as_str)
                    == Some("kaa-conformance rejects it")
        });
        if found {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no status row for {id:?} with 422 and the reason within {:?}: {}",
                h.options.wait,
                clip(&answer.body)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
