//! The communication service (KPC) under test: the kit plays MQTT devices on one
//! side and the extension the KPC forwards to on the other (it answers the 4/ESP
//! `ClientData` it receives with `ExtensionData`, and pushes), listens to the
//! KPC's 9/ELCE connectivity events, and checks 1/KP behaviour as a device sees
//! it.
//!
//! What the kit needs from the KPC:
//!
//! - its MQTT address ([`KpcTarget::mqtt`]) and its service instance name
//!   ([`KpcTarget::kpc_instance`]: the originator of its 9/ELCE events, and the
//!   subject `kaa.v1.service.<kpc>.esp.ExtensionData` it takes pushes on);
//! - an extension instance name it forwards to that nothing else serves on the
//!   NATS server while the kit runs ([`KpcTarget::extension`]): the kit subscribes
//!   to `kaa.v1.service.<extension>.esp.ClientData` and answers as that extension;
//! - endpoint tokens valid for the kit's app version: either the KPC accepts any
//!   token (our KPC's `kpc.accept-any-token: true`, the default here: the kit
//!   makes fresh ones), or a list of tokens ([`KpcTarget::tokens`]), each a
//!   different endpoint, at least [`TOKENS_NEEDED`] of them;
//! - for a KPC that requires MQTT credentials, a username and password it
//!   accepts ([`KpcTarget::with_credentials`]; `--username` and `--password` or
//!   `--password-env` on the command line): every CONNECT of the kit carries them,
//!   and `KP-AUTH-1` checks that wrong ones are refused. Without them the kit
//!   connects anonymously and `KP-AUTH-1` is skipped.
//!
//! Required cases check 1/KP, 4/ESP and 9/ELCE, the MQTT 3.1.1 rules a device
//! relies on (QoS 1 and 2 handshakes, no duplicate onward delivery, refused
//! CONNECTs), and what kaa-notes documents of Kaa's KPC (delivery to the session
//! without SUBSCRIBE, one disconnected event per session); extensions check what
//! only our KPC documents (refusals of malformed topics with a 1/KP error, the
//! latest session winning an endpoint).
//!
//! `KP-QOS-2` is required although 1/KP only RECOMMENDS answering at the
//! request's QoS ("Response QoS level"). What it requires outright are MQTT
//! 3.1.1's MUSTs (4.3.3): PUBREC for the QoS 2 request, PUBCOMP for its PUBREL,
//! and, when the answer comes at QoS 2, PUBREL for the kit's PUBREC. For the
//! answer's QoS it accepts 2 or 1: MQTT lets a server cap the QoS it sends (a
//! SUBACK may grant less than asked, 3.9.3), and many servers, ours among them,
//! never send QoS 2. It fails an answer at QoS 0: `KP-QOS-1` already requires a
//! QoS 1 answer to a QoS 1 request (Kaa's KPC answers at the request's QoS,
//! kaa-notes), and an answer that may be lost is not what a device that asked
//! for exactly-once delivery can work with.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kaa_bus::{Bus, BusError};
use kaa_elce::{ElceEvent, EventKind};
use kaa_esp::{ClientData, ExtensionData};
use kaa_ism::avro::{Decode, Encode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cmx::SuiteOptions;
use crate::mqtt::{
    Device, Incoming, Login, PUBCOMP, PUBREC, PUBREL, Probe, packet_name, probe_refused_connect,
    publish_packet, return_code_name,
};
use crate::report::{CaseInfo, CaseResult, Outcome, Report, run_cases};

/// How many tokens the suite uses when they are given ([`KpcTarget::tokens`]).
pub const TOKENS_NEEDED: usize = 17;

/// The KPC to check and the names the kit plays.
///
/// `Debug` shows neither the password nor the tokens (only how many there are).
#[derive(Clone)]
pub struct KpcTarget {
    /// The KPC's service instance name.
    pub kpc_instance: String,
    /// Its MQTT listener, `host:port`.
    pub mqtt: String,
    /// The extension instance name the kit plays (it must be one the KPC
    /// forwards to).
    pub extension: String,
    /// The app version in the kit's topics.
    pub app_version: String,
    /// Endpoint tokens valid for the app version, each a different endpoint;
    /// empty when the KPC accepts any token (the kit then makes its own).
    pub tokens: Vec<String>,
    /// The username every CONNECT of the kit carries, for a KPC that requires
    /// credentials; `None`: the kit connects anonymously, and `KP-AUTH-1` is
    /// skipped.
    pub username: Option<String>,
    /// The password every CONNECT of the kit carries (with [`KpcTarget::username`];
    /// MQTT 3.1.1 has no password without a username).
    pub password: Option<String>,
}

impl std::fmt::Debug for KpcTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KpcTarget")
            .field("kpc_instance", &self.kpc_instance)
            .field("mqtt", &self.mqtt)
            .field("extension", &self.extension)
            .field("app_version", &self.app_version)
            .field("tokens", &self.tokens.len())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .finish()
    }
}

impl KpcTarget {
    /// A target for a KPC that accepts any token, with app version
    /// `conformance-v1`.
    pub fn new(
        kpc_instance: impl Into<String>,
        mqtt: impl Into<String>,
        extension: impl Into<String>,
    ) -> Self {
        KpcTarget {
            kpc_instance: kpc_instance.into(),
            mqtt: mqtt.into(),
            extension: extension.into(),
            app_version: "conformance-v1".into(),
            tokens: Vec::new(),
            username: None,
            password: None,
        }
    }

    /// The same target, for a KPC that requires this username and password in
    /// every CONNECT (and `KP-AUTH-1` runs).
    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    fn login(&self) -> Option<Login<'_>> {
        self.username.as_deref().map(|username| Login {
            username,
            password: self.password.as_deref(),
        })
    }
}

/// Every case of the KPC suite, in the order they run.
pub const CASES: &[CaseInfo] = &[
    CaseInfo {
        id: "KP-AUTH-1",
        title: "with credentials given: they are accepted; a CONNECT with a wrong password (or none) is refused with CONNACK 4 or 5, the connection closed, and a PUBLISH sent behind it not processed",
        cites: "MQTT 3.1.1 3.1.4 Response (a rejected CONNECT: nothing sent after it processed), 3.2.2.3 Connect Return code, 3.2.2 (close after a non-zero return code); 1/KP Security (CONNECT name and password)",
        extension: false,
    },
    CaseInfo {
        id: "KP-REQ-1",
        title: "a request becomes a ClientData: app version, resource path without the request ID, request ID, payload, replyTo",
        cites: "1/KP Resource path format, Request ID; 4/ESP ClientData",
        extension: false,
    },
    CaseInfo {
        id: "KP-REQ-2",
        title: "a 2xx answer reaches the device on <request topic>/status with the extension's payload",
        cites: "1/KP Response topic: successful responses MUST be published to <request topic>/status",
        extension: false,
    },
    CaseInfo {
        id: "KP-REQ-3",
        title: "a non-2xx answer reaches the device on <request topic>/error as {statusCode, reasonPhrase}",
        cites: "1/KP Response topic; Error response format (0001-error-response.schema.json)",
        extension: false,
    },
    CaseInfo {
        id: "KP-REQ-4",
        title: "two requests in flight answered in reverse order: each answer on its own request ID's topic",
        cites: "1/KP Request ID (MUST NOT use Packet Identifiers to match responses)",
        extension: false,
    },
    CaseInfo {
        id: "KP-REQ-5",
        title: "a request without request ID is forwarded with requestId null and gets no response",
        cites: "1/KP Request ID: without one, a response SHOULD NOT be published; 4/ESP ClientData.requestId",
        extension: false,
    },
    CaseInfo {
        id: "KP-QOS-1",
        title: "a QoS 1 request is acknowledged (PUBACK) and answered at QoS 1",
        cites: "MQTT 3.1.1 4.3.2; kaa-notes KPC (responses at the request's QoS)",
        extension: false,
    },
    CaseInfo {
        id: "KP-QOS-2",
        title: "a QoS 2 request completes PUBREC, PUBREL, PUBCOMP and is answered at QoS 2 (or 1; not 0), a QoS 2 answer with PUBREL",
        cites: "MQTT 3.1.1 4.3.3; 1/KP Response QoS level (RECOMMENDED: the request's QoS)",
        extension: false,
    },
    CaseInfo {
        id: "KP-QOS-3",
        title: "a QoS 2 PUBLISH retransmitted (DUP, same packet ID) before PUBREL gets PUBREC again and is forwarded once; after PUBCOMP the packet ID is a new request",
        cites: "MQTT 3.1.1 4.3.3 (MUST NOT deliver duplicates onward; after PUBCOMP a new publication)",
        extension: false,
    },
    CaseInfo {
        id: "KP-PUSH-1",
        title: "a push (no requestId) reaches the session on <…>/<token><resource path>/status without any SUBSCRIBE",
        cites: "kaa-notes KPC (delivers to the session that owns the token; devices never subscribe); 4/ESP ExtensionData",
        extension: false,
    },
    CaseInfo {
        id: "KP-ERR-1",
        title: "a malformed 1/KP topic with a request ID gets <topic>/error 400 and no ClientData; the session goes on",
        cites: "kaa-rs KPC docs (requests KPC refuses itself); 1/KP Resource path format, Error response format",
        extension: true,
    },
    CaseInfo {
        id: "ELCE-CON-1",
        title: "a session's first use of a token publishes connected with its endpoint and app version",
        cites: "9/ELCE Endpoint connected; kaa-notes KPC (connected when a session first uses a token)",
        extension: false,
    },
    CaseInfo {
        id: "ELCE-DIS-1",
        title: "DISCONNECT publishes one disconnected event listing every endpoint of the session",
        cites: "9/ELCE Endpoint disconnected (SHOULD be one event with all endpoints); kaa-notes KPC",
        extension: false,
    },
    CaseInfo {
        id: "ELCE-DIS-2",
        title: "a connection dropped without DISCONNECT publishes disconnected",
        cites: "9/ELCE Endpoint disconnected (disconnect, timeout, or other reasons); kaa-notes KPC",
        extension: false,
    },
    CaseInfo {
        id: "KP-TOK-1",
        title: "a token used from a second session: pushes go to the new session, and the old one's disconnect does not list it",
        cites: "kaa-rs KPC docs (one owner per endpoint; the latest session wins)",
        extension: true,
    },
];

/// A ClientData the kit's extension received.
#[derive(Debug, Clone)]
struct Received {
    data: ClientData<'static>,
    reply_to: Option<String>,
}

/// A connectivity event of the KPC.
#[derive(Debug, Clone)]
struct Connectivity {
    connected: bool,
    endpoints: Vec<(String, String)>,
}

struct Harness {
    bus: Arc<dyn Bus>,
    target: KpcTarget,
    options: SuiteOptions,
    tag: String,
    client_data: mpsc::UnboundedReceiver<Received>,
    events: mpsc::UnboundedReceiver<Connectivity>,
    /// Events already read while looking for another.
    seen_events: Vec<Connectivity>,
    tokens: std::vec::IntoIter<String>,
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

fn kaa_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Harness {
    async fn start(
        bus: Arc<dyn Bus>,
        target: &KpcTarget,
        options: &SuiteOptions,
    ) -> Result<Self, BusError> {
        let tag = format!(
            "kpcconf{}x{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() % 1_000_000)
                .unwrap_or(0)
        );
        let mut tasks = Vec::new();
        let subject = kaa_esp::subject::client_data_subject(&target.extension)
            .map_err(subject_error)?
            .to_string();
        let mut sub = bus.subscribe(&subject, Some(&target.extension)).await?;
        let (tx, client_data) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Ok(data) = ClientData::decode(&m.payload)
                    && tx
                        .send(Received {
                            data: data.into_owned(),
                            reply_to: m.reply_to.as_deref().map(str::to_owned),
                        })
                        .is_err()
                {
                    return;
                }
            }
        }));
        let (tx, events) = mpsc::unbounded_channel();
        for kind in [EventKind::Connected, EventKind::Disconnected] {
            let subject = kind
                .subject(&target.kpc_instance)
                .map_err(subject_error)?
                .to_string();
            let mut sub = bus.subscribe(&subject, None).await?;
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    let event = match ElceEvent::decode(&m.subject, &m.payload) {
                        Ok(ElceEvent::Connected(e)) => Connectivity {
                            connected: true,
                            endpoints: pairs(&e.endpoints),
                        },
                        Ok(ElceEvent::Disconnected(e)) => Connectivity {
                            connected: false,
                            endpoints: pairs(&e.endpoints),
                        },
                        _ => continue,
                    };
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }));
        }
        kaa_bus::subscription_barrier(bus.as_ref(), Duration::from_secs(5)).await?;
        let tokens = if target.tokens.is_empty() {
            (1..=TOKENS_NEEDED)
                .map(|n| format!("{tag}-tok{n}"))
                .collect::<Vec<_>>()
        } else {
            target.tokens.clone()
        };
        Ok(Harness {
            bus,
            target: target.clone(),
            options: options.clone(),
            tag,
            client_data,
            events,
            seen_events: Vec::new(),
            tokens: tokens.into_iter(),
            tasks,
            next: 0,
        })
    }

    fn token(&mut self) -> Result<String, String> {
        self.tokens.next().ok_or_else(|| {
            format!("out of endpoint tokens: give the kit at least {TOKENS_NEEDED} (--tokens-file)")
        })
    }

    async fn device(&mut self) -> Result<Device, String> {
        self.next += 1;
        let client_id = format!("{}-dev{}", self.tag, self.next);
        Device::connect(
            &self.target.mqtt,
            &client_id,
            self.target.login(),
            self.options.wait,
        )
        .await
    }

    fn topic(&self, token: &str, rest: &str) -> String {
        format!(
            "kp1/{}/{}/{token}/{rest}",
            self.target.app_version, self.target.extension
        )
    }

    /// The next ClientData the kit's extension received.
    async fn next_client_data(&mut self) -> Result<Received, String> {
        tokio::time::timeout(self.options.wait, self.client_data.recv())
            .await
            .ok()
            .flatten()
            .ok_or_else(|| {
                format!(
                    "no ClientData on kaa.v1.service.{}.esp.ClientData within {:?}",
                    self.target.extension, self.options.wait
                )
            })
    }

    /// Answers `to` as the extension.
    async fn answer(
        &self,
        to: &Received,
        status: i32,
        reason: Option<&str>,
        payload: Option<&[u8]>,
    ) -> Result<(), String> {
        let reply_to = to
            .reply_to
            .as_deref()
            .ok_or("the ClientData had no replyTo")?;
        let e = ExtensionData {
            correlation_id: to.data.correlation_id.clone(),
            timestamp: kaa_now(),
            timeout: 0,
            app_version_name: Some(to.data.app_version_name.clone()),
            extension_instance_name: Some(self.target.extension.clone().into()),
            endpoint_id: to.data.endpoint_id.clone(),
            resource_path: to.data.resource_path.clone(),
            request_id: to.data.request_id,
            payload: payload.map(|p| p.to_vec().into()),
            status_code: status,
            reason_phrase: reason.map(|r| r.to_owned().into()),
        };
        self.bus
            .publish(reply_to, Bytes::from(e.to_vec()))
            .await
            .map_err(|e| format!("publishing to {reply_to}: {e}"))
    }

    /// A push (no request ID) to `endpoint` on `resource_path`, on the KPC's
    /// instance-wide subject.
    async fn push(
        &self,
        endpoint: &str,
        resource_path: &str,
        payload: &[u8],
    ) -> Result<(), String> {
        let e = ExtensionData {
            correlation_id: format!("{}-push", self.tag).into(),
            timestamp: kaa_now(),
            timeout: 0,
            app_version_name: Some(self.target.app_version.clone().into()),
            extension_instance_name: Some(self.target.extension.clone().into()),
            endpoint_id: Some(endpoint.to_owned().into()),
            resource_path: resource_path.to_owned().into(),
            request_id: None,
            payload: Some(payload.to_vec().into()),
            status_code: 200,
            reason_phrase: None,
        };
        let subject = kaa_esp::subject::extension_data_subject(&self.target.kpc_instance)
            .map_err(|e| e.to_string())?
            .to_string();
        self.bus
            .publish(&subject, Bytes::from(e.to_vec()))
            .await
            .map_err(|e| format!("publishing to {subject}: {e}"))
    }

    /// Sends `rest` (request ID included) for `token` from `device`, and takes
    /// the ClientData it becomes.
    async fn request(
        &mut self,
        device: &mut Device,
        token: &str,
        rest: &str,
        payload: &[u8],
    ) -> Result<(String, Received), String> {
        let topic = self.topic(token, rest);
        device.publish(&topic, payload, 0).await?;
        match self.next_client_data().await {
            Ok(got) => Ok((topic, got)),
            // The device may have been told why (an unknown token: 401).
            Err(e) => match device.recv(Duration::from_millis(100)).await {
                Some(p) => Err(format!(
                    "{e}; the device got {} {}",
                    p.topic,
                    String::from_utf8_lossy(&p.payload)
                )),
                None => Err(e),
            },
        }
    }

    /// Makes `token` known to the KPC from `device` (one answered request) and
    /// returns its endpoint ID.
    async fn bind(&mut self, device: &mut Device, token: &str) -> Result<String, String> {
        let (topic, got) = self.request(device, token, "config/json/1", b"{}").await?;
        self.answer(&got, 200, None, Some(b"{}")).await?;
        expect_publish(device, &format!("{topic}/status"), self.options.wait).await?;
        got.data
            .endpoint_id
            .as_deref()
            .map(str::to_owned)
            .ok_or_else(|| "the ClientData had no endpointId".to_owned())
    }

    /// The next connectivity event (`connected` or not) listing `endpoint`.
    async fn expect_event(
        &mut self,
        connected: bool,
        endpoint: &str,
    ) -> Result<Connectivity, String> {
        let lists = |e: &Connectivity| {
            e.connected == connected && e.endpoints.iter().any(|(id, _)| id == endpoint)
        };
        if let Some(i) = self.seen_events.iter().position(lists) {
            return Ok(self.seen_events.remove(i));
        }
        let deadline = tokio::time::Instant::now() + self.options.wait;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) if lists(&e) => return Ok(e),
                Ok(Some(e)) => self.seen_events.push(e),
                _ => {
                    return Err(format!(
                        "no {} event listing {endpoint} within {:?}",
                        if connected {
                            "connected"
                        } else {
                            "disconnected"
                        },
                        self.options.wait
                    ));
                }
            }
        }
    }
}

fn pairs(map: &kaa_elce::Map<'_, std::borrow::Cow<'_, str>>) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The next PUBLISH to `device`, which must be on `topic`.
async fn expect_publish(
    device: &mut Device,
    topic: &str,
    within: Duration,
) -> Result<Incoming, String> {
    match device.recv(within).await {
        Some(p) if p.topic == topic => Ok(p),
        Some(p) => Err(format!(
            "expected a PUBLISH on {topic}, got one on {} ({})",
            p.topic,
            String::from_utf8_lossy(&p.payload)
        )),
        None => Err(format!("no PUBLISH on {topic} within {within:?}")),
    }
}

async fn expect_silence(device: &mut Device, within: Duration) -> Result<(), String> {
    match device.recv(within).await {
        None => Ok(()),
        Some(p) => Err(format!(
            "expected nothing, got a PUBLISH on {} ({})",
            p.topic,
            String::from_utf8_lossy(&p.payload)
        )),
    }
}

/// Runs the KPC suite against the KPC named in `target`, calling `progress`
/// after each case.
pub async fn run_kpc_suite(
    bus: Arc<dyn Bus>,
    target: &KpcTarget,
    options: &SuiteOptions,
    progress: impl FnMut(&CaseResult),
) -> Result<Report, BusError> {
    let mut h = Harness::start(bus, target, options).await?;
    Ok(run_cases(
        format!("kpc {}", target.kpc_instance),
        CASES,
        &mut h,
        |case| options.skip(case).or_else(|| not_applicable(case, target)),
        run_case,
        |h| {
            while h.client_data.try_recv().is_ok() {}
            while h.events.try_recv().is_ok() {}
            h.seen_events.clear();
        },
        progress,
    )
    .await)
}

/// Why `case` does not apply to `target`, if it does not.
fn not_applicable(case: &CaseInfo, target: &KpcTarget) -> Option<Outcome> {
    (case.id == "KP-AUTH-1" && target.username.is_none()).then(|| {
        Outcome::Skipped(
            "no credentials given (--username, --password): the KPC is taken to accept anonymous devices"
                .into(),
        )
    })
}

async fn run_case(id: &str, h: &mut Harness) -> Result<(), String> {
    match id {
        "KP-AUTH-1" => credentials_required(h).await,
        "KP-REQ-1" => req_forwarded(h).await,
        "KP-REQ-2" => req_status(h).await,
        "KP-REQ-3" => req_error(h).await,
        "KP-REQ-4" => req_two_in_flight(h).await,
        "KP-REQ-5" => req_without_id(h).await,
        "KP-QOS-1" => qos_1(h).await,
        "KP-QOS-2" => qos_2(h).await,
        "KP-QOS-3" => qos_2_retransmitted(h).await,
        "KP-PUSH-1" => push_without_subscribe(h).await,
        "KP-ERR-1" => malformed_topic(h).await,
        "ELCE-CON-1" => connected(h).await,
        "ELCE-DIS-1" => disconnected(h).await,
        "ELCE-DIS-2" => dropped(h).await,
        "KP-TOK-1" => latest_session_wins(h).await,
        other => Err(format!("unknown case {other}")),
    }
}

async fn req_forwarded(h: &mut Harness) -> Result<(), String> {
    let token = h.token()?;
    let mut dev = h.device().await?;
    let payload = br#"{"observe":true}"#;
    let (_, got) = h
        .request(&mut dev, &token, "config/json/network/7", payload)
        .await?;
    let d = &got.data;
    let mut wrong = Vec::new();
    if d.app_version_name != h.target.app_version {
        wrong.push(format!("appVersionName {:?}", d.app_version_name));
    }
    if d.resource_path != "/config/json/network" {
        wrong.push(format!(
            "resourcePath {:?} (expected \"/config/json/network\")",
            d.resource_path
        ));
    }
    if d.request_id != Some(7) {
        wrong.push(format!("requestId {:?} (expected 7)", d.request_id));
    }
    if d.payload.as_ref() != payload {
        wrong.push(format!("payload {:?}", String::from_utf8_lossy(&d.payload)));
    }
    if d.endpoint_id.as_deref().is_none_or(str::is_empty) {
        wrong.push("no endpointId".into());
    }
    if got.reply_to.is_none() {
        wrong.push("no replyTo".into());
    }
    if d.correlation_id.is_empty() {
        wrong.push("an empty correlationId".into());
    }
    dev.disconnect().await;
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("the ClientData has {}", wrong.join(", ")))
    }
}

async fn req_status(h: &mut Harness) -> Result<(), String> {
    let token = h.token()?;
    let mut dev = h.device().await?;
    let (topic, got) = h.request(&mut dev, &token, "config/json/3", b"{}").await?;
    let answer = br#"{"configId":"c-1","config":{"rate":5}}"#;
    h.answer(&got, 200, Some("OK"), Some(answer)).await?;
    let p = expect_publish(&mut dev, &format!("{topic}/status"), h.options.wait).await?;
    dev.disconnect().await;
    if p.payload != answer {
        return Err(format!(
            "the /status payload is {:?}, the extension sent {:?}",
            String::from_utf8_lossy(&p.payload),
            String::from_utf8_lossy(answer)
        ));
    }
    Ok(())
}

async fn req_error(h: &mut Harness) -> Result<(), String> {
    let token = h.token()?;
    let mut dev = h.device().await?;
    let (topic, got) = h.request(&mut dev, &token, "config/json/4", b"{}").await?;
    h.answer(&got, 404, Some("no such thing"), None).await?;
    let p = expect_publish(&mut dev, &format!("{topic}/error"), h.options.wait).await?;
    dev.disconnect().await;
    let body: Value = serde_json::from_slice(&p.payload).map_err(|e| {
        format!(
            "the /error payload is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&p.payload)
        )
    })?;
    if body != json!({"statusCode": 404, "reasonPhrase": "no such thing"}) {
        return Err(format!(
            "the /error payload is {body}, expected {{\"statusCode\":404,\"reasonPhrase\":\"no such thing\"}} (no other properties)"
        ));
    }
    Ok(())
}

async fn req_two_in_flight(h: &mut Harness) -> Result<(), String> {
    let token = h.token()?;
    let mut dev = h.device().await?;
    let (first_topic, first) = h.request(&mut dev, &token, "config/json/11", b"{}").await?;
    let (second_topic, second) = h.request(&mut dev, &token, "config/json/12", b"{}").await?;
    h.answer(&second, 200, None, Some(b"\"second\"")).await?;
    h.answer(&first, 200, None, Some(b"\"first\"")).await?;
    let a = expect_publish(&mut dev, &format!("{second_topic}/status"), h.options.wait).await?;
    let b = expect_publish(&mut dev, &format!("{first_topic}/status"), h.options.wait).await?;
    dev.disconnect().await;
    if a.payload != b"\"second\"" || b.payload != b"\"first\"" {
        return Err(format!(
            "answers mixed up: request 12 got {:?}, request 11 got {:?}",
            String::from_utf8_lossy(&a.payload),
            String::from_utf8_lossy(&b.payload)
        ));
    }
    Ok(())
}

async fn req_without_id(h: &mut Harness) -> Result<(), String> {
    let token = h.token()?;
    let mut dev = h.device().await?;
    h.bind(&mut dev, &token).await?;
    let (_, got) = h
        .request(&mut dev, &token, "applied/json", br#"{"configId":"c-1"}"#)
        .await?;
    if got.data.request_id.is_some() {
        return Err(format!(
            "forwarded with requestId {:?}",
            got.data.request_id
        ));
    }
    if got.data.resource_path != "/applied/json" {
        return Err(format!(
            "forwarded with resourcePath {:?}",
            got.data.resource_path
        ));
    }
    let quiet = h.options.quiet;
    let r = expect_silence(&mut dev, quiet).await;
    dev.disconnect().await;
    r
}

async fn qos_1(h: &mut Harness) -> Result<(), String> {
    let token = h.token()?;
    let mut dev = h.device().await?;
    let topic = h.topic(&token, "config/json/21");
    dev.publish(&topic, b"{}", 1).await?;
    let got = h.next_client_data().await?;
    h.answer(&got, 200, None, Some(b"{}")).await?;
    let p = expect_publish(&mut dev, &format!("{topic}/status"), h.options.wait).await?;
    dev.disconnect().await;
    if p.qos != 1 {
        return Err(format!("the answer came at QoS {}", p.qos));
    }
    Ok(())
}

/// `KP-QOS-2`: required, QoS 1 or 2 accepted for the answer (why: the module
/// docs).
async fn qos_2(h: &mut Harness) -> Result<(), String> {
    let token = h.token()?;
    let mut dev = h.device().await?;
    let topic = h.topic(&token, "config/json/41");
    dev.publish(&topic, b"{}", 2).await?;
    let got = h.next_client_data().await?;
    h.answer(&got, 200, None, Some(b"{}")).await?;
    let wait = h.options.wait;
    let p = expect_publish(&mut dev, &format!("{topic}/status"), wait).await?;
    let r = match (p.qos, p.packet_id) {
        (1, _) => Ok(()),
        (2, Some(id)) => dev
            .expect_ack(PUBREL, id, wait)
            .await
            .map_err(|e| format!("the QoS 2 answer's handshake: after the kit's PUBREC, {e}")),
        (qos, _) => Err(format!(
            "the answer to a QoS 2 request came at QoS {qos}: 1/KP recommends the request's QoS, \
             the kit accepts 1 or 2"
        )),
    };
    dev.disconnect().await;
    r
}

/// `KP-QOS-3`: MQTT 3.1.1 4.3.3 (required): until PUBREL, a PUBLISH with the
/// same packet identifier gets PUBREC again and is not delivered onward again;
/// after PUBCOMP, one is a new publication.
async fn qos_2_retransmitted(h: &mut Harness) -> Result<(), String> {
    let token = h.token()?;
    let mut dev = h.device().await?;
    let wait = h.options.wait;
    let quiet = h.options.quiet;
    let topic = h.topic(&token, "config/json/42");
    let id = dev.next_packet_id();
    dev.send_raw(
        &publish_packet(&topic, b"{}", 2, false, id),
        "QoS 2 PUBLISH",
    )
    .await?;
    dev.expect_ack(PUBREC, id, wait)
        .await
        .map_err(|e| format!("the QoS 2 PUBLISH: {e}"))?;
    dev.send_raw(&publish_packet(&topic, b"{}", 2, true, id), "DUP PUBLISH")
        .await?;
    dev.expect_ack(PUBREC, id, wait).await.map_err(|e| {
        format!("the same PUBLISH again (DUP, packet identifier {id}) before PUBREL: {e}")
    })?;
    let first = h.next_client_data().await?;
    if let Ok(Some(again)) = tokio::time::timeout(quiet, h.client_data.recv()).await {
        return Err(format!(
            "a QoS 2 PUBLISH retransmitted (DUP, packet identifier {id}) before PUBREL was \
             forwarded again: a second ClientData for {:?} (request ID {:?})",
            again.data.resource_path, again.data.request_id
        ));
    }
    dev.send_pubrel(id).await?;
    dev.expect_ack(PUBCOMP, id, wait).await?;
    h.answer(&first, 200, None, Some(b"{}")).await?;
    expect_publish(&mut dev, &format!("{topic}/status"), wait).await?;
    expect_silence(&mut dev, quiet)
        .await
        .map_err(|e| format!("one request, one answer: {e}"))?;
    // After PUBCOMP the packet identifier is free: the same one is a new request.
    let next = h.topic(&token, "config/json/43");
    dev.send_raw(&publish_packet(&next, b"{}", 2, false, id), "QoS 2 PUBLISH")
        .await?;
    dev.expect_ack(PUBREC, id, wait)
        .await
        .map_err(|e| format!("a new PUBLISH with packet identifier {id} after PUBCOMP: {e}"))?;
    let got = h.next_client_data().await.map_err(|e| {
        format!("a new PUBLISH with packet identifier {id} after PUBCOMP was not forwarded: {e}")
    })?;
    if got.data.request_id != Some(43) {
        return Err(format!(
            "after PUBCOMP, a new PUBLISH with packet identifier {id} was forwarded with request ID {:?}, expected 43",
            got.data.request_id
        ));
    }
    dev.send_pubrel(id).await?;
    dev.expect_ack(PUBCOMP, id, wait).await?;
    dev.disconnect().await;
    Ok(())
}

/// `KP-AUTH-1` (run only when credentials are given): the given ones open a
/// session; a wrong password, and no credentials at all, are refused with
/// CONNACK 4 or 5, the connection then closed (MQTT 3.1.1 3.2.2), and a request
/// the device sent behind the CONNECT without waiting (3.1.4 allows it) is not
/// processed: no ClientData, no PUBACK, no response.
async fn credentials_required(h: &mut Harness) -> Result<(), String> {
    let dev = h
        .device()
        .await
        .map_err(|e| format!("the given credentials: {e}"))?;
    dev.disconnect().await;
    let token = h.token()?;
    let username = h.target.username.clone().unwrap_or_default();
    let wrong = match h.target.password.as_deref() {
        Some(p) => format!("{p}-not-the-password"),
        None => "kaa-conformance-not-the-password".to_owned(),
    };
    let wrong_login = Login {
        username: &username,
        password: Some(&wrong),
    };
    for (what, login) in [
        ("a wrong password", Some(wrong_login)),
        ("no credentials", None),
    ] {
        h.next += 1;
        let client_id = format!("{}-dev{}", h.tag, h.next);
        let topic = h.topic(&token, "config/json/51");
        let behind = publish_packet(&topic, b"{}", 1, false, 1);
        let probe =
            probe_refused_connect(&h.target.mqtt, &client_id, login, &behind, h.options.wait)
                .await?;
        let at = |e: String| format!("a CONNECT with {what}: {e}");
        match probe {
            Probe::ConnAck {
                return_code: 4 | 5,
                session_present,
                then,
                closed,
            } => {
                if session_present {
                    return Err(at("refused with session present 1 (MQTT 3.1.1 3.2.2.2: 0 with a non-zero return code)".into()));
                }
                if let Some(kind) = then.first() {
                    let kinds: Vec<&str> = then.iter().map(|k| packet_name(*k)).collect();
                    return Err(at(format!(
                        "refused, then the device got {} ({}): nothing sent behind a refused CONNECT may be processed",
                        packet_name(*kind),
                        kinds.join(", ")
                    )));
                }
                if !closed {
                    return Err(at(format!(
                        "refused, but the connection was still open {:?} later (MQTT 3.1.1 3.2.2: the server MUST close it)",
                        h.options.wait
                    )));
                }
            }
            Probe::ConnAck { return_code, .. } => {
                return Err(at(format!(
                    "CONNACK return code {return_code} ({}); a KPC that requires credentials refuses it with 4 (bad user name or password) or 5 (not authorized)",
                    return_code_name(return_code)
                )));
            }
            Probe::Other(kind) => {
                return Err(at(format!(
                    "answered with {} instead of a CONNACK",
                    packet_name(kind)
                )));
            }
            Probe::ClosedWithoutConnAck => {
                return Err(at(
                    "the connection was closed without a CONNACK; MQTT 3.1.1 3.1.4 says to send CONNACK 4 or 5 first"
                        .into(),
                ));
            }
        }
        if let Ok(Some(r)) = tokio::time::timeout(h.options.quiet, h.client_data.recv()).await {
            return Err(at(format!(
                "the PUBLISH sent behind it was forwarded as a ClientData for {:?}",
                r.data.resource_path
            )));
        }
    }
    Ok(())
}

async fn push_without_subscribe(h: &mut Harness) -> Result<(), String> {
    let token = h.token()?;
    let mut dev = h.device().await?;
    let endpoint = h.bind(&mut dev, &token).await?;
    let pushed = br#"{"configId":"c-2","config":{"rate":6}}"#;
    h.push(&endpoint, "/config/json", pushed).await?;
    let topic = h.topic(&token, "config/json/status");
    let p = expect_publish(&mut dev, &topic, h.options.wait).await?;
    dev.disconnect().await;
    if p.payload != pushed {
        return Err(format!(
            "the push's payload is {:?}",
            String::from_utf8_lossy(&p.payload)
        ));
    }
    Ok(())
}

async fn malformed_topic(h: &mut Harness) -> Result<(), String> {
    let token = h.token()?;
    let mut dev = h.device().await?;
    for bad in [
        format!(
            "kp2/{}/{}/{token}/config/json/31",
            h.target.app_version, h.target.extension
        ),
        format!("kp1/{}//{token}/config/json/32", h.target.app_version),
    ] {
        dev.publish(&bad, b"{}", 0).await?;
        let p = expect_publish(&mut dev, &format!("{bad}/error"), h.options.wait).await?;
        let body: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
        if body.get("statusCode").and_then(Value::as_i64) != Some(400)
            || body.get("reasonPhrase").and_then(Value::as_str).is_none()
        {
            return Err(format!(
                "{bad}/error carries {body}, expected statusCode 400 and a reasonPhrase"
            ));
        }
    }
    if let Ok(Some(r)) = tokio::time::timeout(h.options.quiet, h.client_data.recv()).await {
        return Err(format!(
            "a malformed topic was forwarded as a ClientData for {:?}",
            r.data.resource_path
        ));
    }
    h.bind(&mut dev, &token)
        .await
        .map_err(|e| format!("after the malformed topics: {e}"))?;
    dev.disconnect().await;
    Ok(())
}

async fn connected(h: &mut Harness) -> Result<(), String> {
    let token = h.token()?;
    let mut dev = h.device().await?;
    let endpoint = h.bind(&mut dev, &token).await?;
    let e = h.expect_event(true, &endpoint).await?;
    dev.disconnect().await;
    let app = e
        .endpoints
        .iter()
        .find(|(id, _)| *id == endpoint)
        .map(|(_, app)| app.clone());
    if app.as_deref() != Some(h.target.app_version.as_str()) {
        return Err(format!(
            "connected lists {endpoint} with app version {app:?}, expected {:?}",
            h.target.app_version
        ));
    }
    Ok(())
}

async fn disconnected(h: &mut Harness) -> Result<(), String> {
    let (a, b) = (h.token()?, h.token()?);
    let mut dev = h.device().await?;
    let ea = h.bind(&mut dev, &a).await?;
    let eb = h.bind(&mut dev, &b).await?;
    dev.disconnect().await;
    let e = h.expect_event(false, &ea).await?;
    if !e.endpoints.iter().any(|(id, _)| *id == eb) {
        return Err(format!(
            "the disconnected event lists {:?}, not both of the session's endpoints ({ea}, {eb})",
            e.endpoints
        ));
    }
    Ok(())
}

async fn dropped(h: &mut Harness) -> Result<(), String> {
    let token = h.token()?;
    let mut dev = h.device().await?;
    let endpoint = h.bind(&mut dev, &token).await?;
    dev.drop_connection().await;
    h.expect_event(false, &endpoint).await.map(|_| ())
}

async fn latest_session_wins(h: &mut Harness) -> Result<(), String> {
    let token = h.token()?;
    let mut old = h.device().await?;
    let endpoint = h.bind(&mut old, &token).await?;
    let mut new = h.device().await?;
    h.bind(&mut new, &token).await?;
    h.push(&endpoint, "/config/json", b"\"after takeover\"")
        .await?;
    let topic = h.topic(&token, "config/json/status");
    expect_publish(&mut new, &topic, h.options.wait)
        .await
        .map_err(|e| format!("the new session: {e}"))?;
    let quiet = h.options.quiet;
    expect_silence(&mut old, quiet)
        .await
        .map_err(|e| format!("the old session: {e}"))?;
    old.disconnect().await;
    // The old session's end must not take the endpoint from the new one.
    tokio::time::sleep(quiet).await;
    while let Ok(e) = h.events.try_recv() {
        h.seen_events.push(e);
    }
    if let Some(e) = h
        .seen_events
        .iter()
        .find(|e| !e.connected && e.endpoints.iter().any(|(id, _)| *id == endpoint))
    {
        return Err(format!(
            "the old session's disconnect listed {endpoint}: {:?}",
            e.endpoints
        ));
    }
    h.push(&endpoint, "/config/json", b"\"still there\"")
        .await?;
    let r = expect_publish(&mut new, &topic, h.options.wait)
        .await
        .map_err(|e| format!("the new session after the old one left: {e}"));
    new.disconnect().await;
    r.map(|_| ())
}
