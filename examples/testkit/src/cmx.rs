//! Helpers shared by the CMX integration tests: a fake configuration provider and
//! a fake communication service that speak raw Avro on any [`Bus`] (the codecs of
//! kaa-esp, kaa-cdtp and kaa-elce, never the engine), unique names per test, and a
//! CMX service started from YAML with Kaa's keys.
//!
//! Tests share the machine's NATS server and run in parallel. Their subjects are
//! unique (instance names carry a per-test tag), except for 9/ELCE events: a CMX
//! subscribes to `kaa.v1.events.*.endpoint.connectivity.*` from every originator,
//! so one test's `connected` event reaches every CMX on the server. Each test's
//! endpoint IDs therefore start with its tag, and the fakes ignore the others: the
//! provider answers foreign requests 404 (no configuration) without showing them to
//! the test, and the communication service drops foreign `ExtensionData`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kaa_bus::{Bus, NatsBus, NatsConfig};
use kaa_cdtp::{
    APPLICATION_JSON, ConfigApplied, ConfigRequest, ConfigResponse, ConfigUpdated, Current,
};
use kaa_elce::{AppVersionUpdatedEvent, ConnectedEvent, DisconnectedEvent, EventKind};
use kaa_esp::{ClientData, ExtensionData};
use kaa_examples::cmx::config::CmxServiceConfig;
use kaa_examples::cmx::{CmxService, CmxStatus, RunError, RunReport, now, subscription_barrier};
use kaa_ism::avro::{Decode, Encode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a test waits for a message it expects.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test waits to be sure a message does not come.
pub const QUIET: Duration = Duration::from_millis(400);

/// App versions every test configuration lists in `kaa.applications`.
pub const APP_V1: &str = "smartKettleV1";
/// The second known app version.
pub const APP_V2: &str = "smartKettleV2";

/// The names of one test's services and endpoints.
#[derive(Debug, Clone)]
pub struct Names {
    /// A tag unique to the test (process ID and counter).
    pub tag: String,
    /// CMX `service.instance.name`.
    pub cmx: String,
    /// CMX `service.instance.replica.id`.
    pub replica: String,
    /// The provider's instance name.
    pub provider: String,
    /// The communication service's instance name.
    pub kpc: String,
    /// The communication service's replica ID.
    pub kpc_replica: String,
}

impl Names {
    /// Fresh names for one test.
    pub fn unique(test: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let short: String = test
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect();
        let tag = format!(
            "{short}{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Names {
            cmx: format!("cmx-{tag}"),
            replica: format!("cmx-{tag}-r1"),
            provider: format!("ecr-{tag}"),
            kpc: format!("kpc-{tag}"),
            kpc_replica: format!("kpc-{tag}-r1"),
            tag,
        }
    }

    /// An endpoint ID of this test.
    pub fn endpoint(&self, n: u32) -> String {
        format!("{}-ep{n}", self.tag)
    }

    /// The CMX configuration for these names, with `extra_cmx` appended inside the
    /// `cmx:` section (already indented by two spaces per line) and `nats` set when
    /// `nats_url` is given.
    pub fn config_yaml(&self, nats_url: Option<&str>, extra_cmx: &str) -> String {
        let nats = nats_url.map_or_else(String::new, |u| format!("nats:\n  urls: [{u}]\n"));
        format!(
            "service:\n  instance:\n    name: {cmx}\n    replica:\n      id: {replica}\n\
             {nats}\
             kaa:\n  cmx:\n    configuration-data-provider:\n      service-instance:\n        name: {provider}\n\
             \x20   communication-service:\n      service-instance:\n        name: {kpc}\n\
             \x20   endpoint-state-persistence:\n      ttl: 3600\n\
             \x20 applications:\n    kettle:\n      versions:\n        {APP_V1}: {{}}\n        {APP_V2}: {{}}\n\
             cmx:\n  bus: {bus}\n{timeout}{extra_cmx}",
            cmx = self.cmx,
            replica = self.replica,
            provider = self.provider,
            kpc = self.kpc,
            bus = if nats_url.is_some() { "nats" } else { "memory" },
            timeout = if extra_cmx.contains("cdtp-timeout-ms") {
                ""
            } else {
                "  cdtp-timeout-ms: 3000\n"
            },
        )
    }

    /// `kaa.v1.replica.<kpc replica>.esp.ExtensionData`: the `replyTo` of the fake
    /// communication service's `ClientData`.
    pub fn kpc_reply_subject(&self) -> String {
        kaa_esp::subject::extension_data_replica_subject(&self.kpc_replica)
            .unwrap()
            .to_string()
    }

    /// `kaa.v1.service.<kpc>.esp.ExtensionData`: where pushes without session
    /// affinity go.
    pub fn kpc_service_subject(&self) -> String {
        kaa_esp::subject::extension_data_subject(&self.kpc)
            .unwrap()
            .to_string()
    }

    /// `kaa.v1.replica.<cmx replica>.cdtp.response`.
    pub fn cdtp_reply_subject(&self) -> String {
        kaa_cdtp::subject::response_subject(&self.replica)
            .unwrap()
            .to_string()
    }
}

/// Waits until `bus` has put its subscriptions into effect (a NATS flush alone
/// does not guarantee that other connections' publishes see them).
pub async fn barrier(bus: &dyn Bus) {
    assert!(
        subscription_barrier(bus, WAIT).await.expect("barrier"),
        "the bus did not confirm its subscriptions"
    );
}

/// A NATS bus to `url` for a test (fails fast when the server is not there).
pub async fn nats(url: &str) -> Arc<dyn Bus> {
    let config = NatsConfig::new([url]).with_retry_on_initial_connect(false);
    Arc::new(NatsBus::connect(&config).await.expect("connect to NATS"))
}

/// A running CMX service.
pub struct RunningCmx {
    /// Health and metrics.
    pub status: CmxStatus,
    /// `/health` and `/metrics`, when `cmx.http.listen` was set.
    pub http: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The service task.
    pub task: JoinHandle<Result<RunReport, RunError>>,
}

impl RunningCmx {
    /// Starts CMX from YAML text on `bus`.
    pub async fn start(yaml: &str, bus: Arc<dyn Bus>) -> Self {
        let config = CmxServiceConfig::parse(yaml, "test config").expect("valid test config");
        Self::start_config(&config, bus).await
    }

    /// Starts CMX from a parsed configuration on `bus`.
    pub async fn start_config(config: &CmxServiceConfig, bus: Arc<dyn Bus>) -> Self {
        let service = CmxService::bind(config, bus).await.expect("bind CMX");
        Self::spawn(service)
    }

    /// Runs a bound service.
    pub fn spawn(service: CmxService) -> Self {
        let status = service.status();
        let http = service.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(service.run(async move {
            let _ = stopped.await;
        }));
        RunningCmx {
            status,
            http,
            stop: Some(stop),
            task,
        }
    }

    /// Signals shutdown (the drain starts) without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Signals shutdown and waits for the report.
    pub async fn stop(mut self) -> RunReport {
        self.signal_stop();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("CMX stops")
            .expect("CMX task")
            .expect("CMX run")
    }

    /// Waits until the service reports `state`.
    pub async fn wait_state(&self, state: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.status.state() != state {
            assert!(
                tokio::time::Instant::now() < deadline,
                "CMX never reached state {state} (is {})",
                self.status.state()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The value of one metric sample line (`name{labels}` exactly), 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.status.metrics_text(), sample)
    }

    /// Waits until metric `sample` is `value` (for gauges that other tests on a
    /// shared NATS server can move for a moment: 9/ELCE events of every
    /// communication service reach every CMX); fails after a few seconds.
    pub async fn wait_metric(&self, sample: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let now = self.metric(sample);
            if now == value {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sample} stayed {now}, not {value}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The value of `sample` (metric name with its labels, as printed) in a
/// Prometheus text exposition; 0 when absent.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(sample)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or(0.0)
}

/// A session the fake communication service lists when asked: endpoint ID,
/// app version, resource paths used with the CMX.
pub type Session = (String, String, Vec<String>);

/// A configuration request as the fake provider received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The decoded request.
    pub request: ConfigRequest<'static>,
    /// Its NATS `replyTo`.
    pub reply_to: String,
}

/// A fake 6/CDTP provider: shows the test every request for the test's endpoints
/// and answers only what the test says.
pub struct FakeProvider {
    bus: Arc<dyn Bus>,
    names: Names,
    requests: mpsc::UnboundedReceiver<Received>,
    task: JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProvider {
    /// Stops and unsubscribes, and waits until the server knows: requests then find
    /// no provider (NATS answers them "no responders").
    pub async fn stop(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await; // the subscription is dropped with the task
        barrier(self.bus.as_ref()).await;
    }

    /// Subscribes to `kaa.v1.service.<provider>.cdtp.request`.
    pub async fn start(bus: Arc<dyn Bus>, names: &Names) -> Self {
        let subject = kaa_cdtp::subject::request_subject(&names.provider)
            .unwrap()
            .to_string();
        let mut sub = bus
            .subscribe(&subject, Some(&names.provider))
            .await
            .unwrap();
        barrier(bus.as_ref()).await;
        let (tx, requests) = mpsc::unbounded_channel();
        let prefix = format!("{}-", names.tag);
        let task_bus = Arc::clone(&bus);
        let task = tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                let Ok(request) = ConfigRequest::decode(&message.payload) else {
                    panic!("the CMX sent an undecodable ConfigRequest");
                };
                let reply_to = message.reply_to.clone().expect("a replyTo");
                if request.endpoint_id.starts_with(&prefix) {
                    let _ = tx.send(Received {
                        request: request.into_owned(),
                        reply_to: reply_to.into(),
                    });
                } else {
                    // Another test's endpoint: no configuration.
                    let response = ConfigResponse::error(Some(&request), 404, "Not found", now().0);
                    let _ = task_bus
                        .publish(&reply_to, Bytes::from(response.to_vec()))
                        .await;
                }
            }
        });
        FakeProvider {
            bus,
            names: names.clone(),
            requests,
            task,
        }
    }

    /// The next request for this test's endpoints.
    pub async fn next_request(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("a ConfigRequest reaches the provider")
            .expect("provider task alive")
    }

    /// The next request for this test's endpoints, without a timeout (`None` when
    /// the provider's subscription ended).
    pub async fn next_request_raw(&mut self) -> Option<Received> {
        self.requests.recv().await
    }

    /// Asserts that no request arrives for a while.
    pub async fn expect_no_request(&mut self) {
        if let Ok(Some(r)) = tokio::time::timeout(QUIET, self.requests.recv()).await {
            panic!("unexpected ConfigRequest {r:?}");
        }
    }

    /// Answers with a configuration (whatever the request named).
    pub async fn answer_config(&self, received: &Received, config_id: &str, content: &str) {
        let current = Current::Config {
            config_id,
            content: content.as_bytes(),
        };
        let response = ConfigResponse::current(&received.request, current, now().0);
        self.answer(received, &response).await;
    }

    /// Answers "unchanged" (no `configId`, no content).
    pub async fn answer_unchanged(&self, received: &Received) {
        let response = ConfigResponse::unchanged(&received.request, now().0);
        self.answer(received, &response).await;
    }

    /// Publishes `response` on the request's `replyTo`.
    pub async fn answer(&self, received: &Received, response: &ConfigResponse<'_>) {
        self.bus
            .publish(&received.reply_to, Bytes::from(response.to_vec()))
            .await
            .unwrap();
    }

    /// Broadcasts `endpoint.config.updated`.
    pub async fn config_updated(
        &self,
        endpoint_id: &str,
        app_version: &str,
        config_id: &str,
        content: &str,
        config_name: Option<&str>,
    ) {
        let event = ConfigUpdated {
            correlation_id: format!("upd-{}", uuid::Uuid::new_v4()).into(),
            timestamp: now().0,
            timeout: 0,
            app_version_name: app_version.to_owned().into(),
            endpoint_id: endpoint_id.to_owned().into(),
            config_id: config_id.to_owned().into(),
            content_type: APPLICATION_JSON.into(),
            content: content.as_bytes().to_vec().into(),
            originator_replica_id: Some(format!("{}-r1", self.names.provider).into()),
            config_name: config_name.map(|n| n.to_owned().into()),
        };
        let subject = kaa_cdtp::subject::config_updated_subject(&self.names.provider)
            .unwrap()
            .to_string();
        self.bus
            .publish(&subject, Bytes::from(event.to_vec()))
            .await
            .unwrap();
    }
}

/// An `ExtensionData` as the fake communication service received it.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The subject it arrived on.
    pub subject: String,
    /// The decoded message.
    pub message: ExtensionData<'static>,
}

impl Delivered {
    /// The payload as JSON (`Value::Null` for no payload).
    pub fn json(&self) -> serde_json::Value {
        self.message
            .payload
            .as_deref()
            .map_or(serde_json::Value::Null, |p| {
                serde_json::from_slice(p).expect("JSON payload")
            })
    }
}

/// A fake communication service (KPC): sends `ClientData` and 9/ELCE connectivity
/// events, receives `ExtensionData`, and watches `endpoint.config.applied`.
pub struct FakeKpc {
    bus: Arc<dyn Bus>,
    names: Names,
    delivered: mpsc::UnboundedReceiver<Delivered>,
    applied: mpsc::UnboundedReceiver<ConfigApplied<'static>>,
    tasks: Vec<JoinHandle<()>>,
    next_correlation: u64,
}

impl Drop for FakeKpc {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FakeKpc {
    /// Subscribes to the replica and instance-wide `ExtensionData` subjects and to
    /// the CMX's `endpoint.config.applied`.
    pub async fn start(bus: Arc<dyn Bus>, names: &Names) -> Self {
        let replica = names.kpc_reply_subject();
        let mut from_replica = bus.subscribe(&replica, None).await.unwrap();
        let mut from_service = bus
            .subscribe(&names.kpc_service_subject(), Some(&names.kpc))
            .await
            .unwrap();
        let applied_subject = kaa_cdtp::subject::config_applied_subject(&names.cmx)
            .unwrap()
            .to_string();
        let mut applied_sub = bus.subscribe(&applied_subject, None).await.unwrap();
        barrier(bus.as_ref()).await;
        let (tx, delivered) = mpsc::unbounded_channel();
        let prefix = format!("{}-", names.tag);
        let mut tasks = Vec::new();
        {
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(m) = from_replica.next().await {
                    // NATS answers a `ClientData` (it has a `replyTo`) that nobody
                    // subscribes to with an empty "no responders" status message.
                    if m.payload.is_empty() {
                        continue;
                    }
                    let message = ExtensionData::decode(&m.payload)
                        .expect("CMX sends valid ExtensionData")
                        .into_owned();
                    let _ = tx.send(Delivered {
                        subject: m.subject.into(),
                        message,
                    });
                }
            }));
        }
        tasks.push(tokio::spawn(async move {
            while let Some(m) = from_service.next().await {
                let message = ExtensionData::decode(&m.payload)
                    .expect("CMX sends valid ExtensionData")
                    .into_owned();
                // Pushes for other tests' endpoints (see the module docs).
                if message
                    .endpoint_id
                    .as_deref()
                    .is_some_and(|e| e.starts_with(&prefix))
                {
                    let _ = tx.send(Delivered {
                        subject: m.subject.into(),
                        message,
                    });
                }
            }
        }));
        let (applied_tx, applied) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(async move {
            while let Some(m) = applied_sub.next().await {
                let event = ConfigApplied::decode(&m.payload)
                    .expect("CMX sends valid ConfigApplied")
                    .into_owned();
                let _ = applied_tx.send(event);
            }
        }));
        FakeKpc {
            bus,
            names: names.clone(),
            delivered,
            applied,
            tasks,
            next_correlation: 0,
        }
    }

    /// `kaa.v1.service.<cmx>.esp.ClientData`.
    pub fn client_data_subject(&self) -> String {
        kaa_esp::subject::client_data_subject(&self.names.cmx)
            .unwrap()
            .to_string()
    }

    /// Forwards a device message as `ClientData` (with the replica `replyTo`) and
    /// returns its correlation ID.
    pub async fn send(
        &mut self,
        endpoint_id: &str,
        app_version: &str,
        resource_path: &str,
        request_id: Option<i32>,
        payload: &[u8],
    ) -> String {
        self.next_correlation += 1;
        let correlation_id = format!("{}-kpc-{}", self.names.tag, self.next_correlation);
        let message = ClientData {
            correlation_id: Cow::Owned(correlation_id.clone()),
            timestamp: now().0,
            timeout: 0,
            app_version_name: app_version.to_owned().into(),
            endpoint_id: Some(endpoint_id.to_owned().into()),
            resource_path: resource_path.to_owned().into(),
            request_id,
            payload: Cow::Owned(payload.to_vec()),
            config_name: None,
        };
        self.send_raw(&message.to_vec()).await;
        correlation_id
    }

    /// Publishes raw bytes as `ClientData` (with the replica `replyTo`).
    pub async fn send_raw(&self, datum: &[u8]) {
        self.bus
            .publish_with_reply(
                &self.client_data_subject(),
                &self.names.kpc_reply_subject(),
                Bytes::copy_from_slice(datum),
            )
            .await
            .unwrap();
    }

    /// The next `ExtensionData` for this test.
    pub async fn next(&mut self) -> Delivered {
        tokio::time::timeout(WAIT, self.delivered.recv())
            .await
            .expect("ExtensionData reaches the communication service")
            .expect("KPC task alive")
    }

    /// The next `ExtensionData` for this test within `wait`, if any.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Delivered> {
        tokio::time::timeout(wait, self.delivered.recv())
            .await
            .ok()
            .flatten()
    }

    /// Asserts that no `ExtensionData` arrives for a while.
    pub async fn expect_nothing(&mut self) {
        if let Ok(Some(d)) = tokio::time::timeout(QUIET, self.delivered.recv()).await {
            panic!("unexpected ExtensionData {d:?}");
        }
    }

    /// The next `endpoint.config.applied` broadcast by the CMX.
    pub async fn next_applied(&mut self) -> ConfigApplied<'static> {
        tokio::time::timeout(WAIT, self.applied.recv())
            .await
            .expect("ConfigApplied is broadcast")
            .expect("KPC task alive")
    }

    /// Broadcasts `endpoint.connectivity.connected` for `endpoints` (ID, app version).
    pub async fn connected(&self, endpoints: &[(&str, &str)]) {
        let event = ConnectedEvent {
            correlation_id: format!("conn-{}", uuid::Uuid::new_v4()).into(),
            timestamp: now().0,
            timeout: 0,
            endpoints: endpoints
                .iter()
                .map(|(e, a)| (Cow::Owned((*e).to_owned()), Cow::Owned((*a).to_owned())))
                .collect(),
            originator_replica_id: self.names.kpc_replica.clone().into(),
        };
        let subject = EventKind::Connected
            .subject(&self.names.kpc)
            .unwrap()
            .to_string();
        self.bus
            .publish(&subject, Bytes::from(event.to_vec()))
            .await
            .unwrap();
    }

    /// Broadcasts `endpoint.connectivity.disconnected`.
    pub async fn disconnected(&self, endpoints: &[(&str, &str)]) {
        let event = DisconnectedEvent {
            correlation_id: format!("disc-{}", uuid::Uuid::new_v4()).into(),
            timestamp: now().0,
            timeout: 0,
            endpoints: endpoints
                .iter()
                .map(|(e, a)| (Cow::Owned((*e).to_owned()), Cow::Owned((*a).to_owned())))
                .collect(),
            originator_replica_id: self.names.kpc_replica.clone().into(),
        };
        let subject = EventKind::Disconnected
            .subject(&self.names.kpc)
            .unwrap()
            .to_string();
        self.bus
            .publish(&subject, Bytes::from(event.to_vec()))
            .await
            .unwrap();
    }

    /// Answers sessions requests (kaa-rs extension,
    /// `kaa.v1.service.<kpc>.elce.SessionsRequest`) from now on with what
    /// `sessions` holds when the request comes: (endpoint ID, app version,
    /// resource paths). The answer goes to the request's `replyTo` and carries
    /// its correlation ID, as KPC's does.
    pub async fn serve_sessions(&mut self, sessions: Arc<std::sync::Mutex<Vec<Session>>>) {
        let subject = kaa_elce::sessions_request_subject(&self.names.kpc)
            .unwrap()
            .to_string();
        let mut sub = self.bus.subscribe(&subject, None).await.unwrap();
        barrier(self.bus.as_ref()).await;
        let bus = Arc::clone(&self.bus);
        let replica = self.names.kpc_replica.clone();
        self.tasks.push(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let Ok(request) = kaa_elce::SessionsRequest::decode(&m.payload) else {
                    continue;
                };
                let Some(reply_to) = m.reply_to.clone() else {
                    continue;
                };
                let endpoints = sessions
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(e, a, paths)| kaa_elce::EndpointSession {
                        endpoint_id: e.clone().into(),
                        app_version_name: a.clone().into(),
                        resource_paths: paths.iter().map(|p| p.clone().into()).collect(),
                    })
                    .collect();
                let answer = kaa_elce::SessionsResponse {
                    correlation_id: request.correlation_id.clone(),
                    timestamp: now().0,
                    timeout: 0,
                    endpoints,
                    originator_replica_id: replica.clone().into(),
                };
                let _ = bus.publish(&reply_to, Bytes::from(answer.to_vec())).await;
            }
        }));
    }

    /// Broadcasts `endpoint.lifecycle.appversion-updated` as an endpoint register
    /// (`epr-<tag>`) would.
    pub async fn app_version_updated(&self, endpoint_id: &str, previous: &str, current: &str) {
        let originator = format!("epr-{}", self.names.tag);
        let event = AppVersionUpdatedEvent {
            correlation_id: format!("avu-{}", uuid::Uuid::new_v4()).into(),
            timestamp: now().0,
            timeout: 0,
            app_version_name: current.to_owned().into(),
            previous_app_version_name: previous.to_owned().into(),
            endpoint_id: endpoint_id.to_owned().into(),
            originator_replica_id: format!("{originator}-r1").into(),
        };
        let subject = EventKind::AppVersionUpdated
            .subject(&originator)
            .unwrap()
            .to_string();
        self.bus
            .publish(&subject, Bytes::from(event.to_vec()))
            .await
            .unwrap();
    }
}

/// One test's CMX with its fakes.
pub struct Stack {
    /// The names.
    pub names: Names,
    /// The CMX service.
    pub cmx: RunningCmx,
    /// The fake provider.
    pub provider: FakeProvider,
    /// The fake communication service.
    pub kpc: FakeKpc,
}

impl Stack {
    /// Starts the fakes on `fakes_bus` and a CMX on `cmx_bus` configured by
    /// [`Names::config_yaml`] with `extra_cmx`.
    pub async fn start(
        names: Names,
        nats_url: Option<&str>,
        cmx_bus: Arc<dyn Bus>,
        fakes_bus: Arc<dyn Bus>,
        extra_cmx: &str,
    ) -> Self {
        if std::env::var_os("CMX_TEST_LOG").is_some() {
            // Debugging aid: CMX logs to stderr (run with --nocapture).
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(
                    "kaa_examples=debug,kaa_cmx=debug,kaa_ecr=debug,kaa_kpc=debug",
                ))
                .with_writer(std::io::stderr)
                .try_init();
        }
        let provider = FakeProvider::start(Arc::clone(&fakes_bus), &names).await;
        let kpc = FakeKpc::start(fakes_bus, &names).await;
        let cmx = RunningCmx::start(&names.config_yaml(nats_url, extra_cmx), cmx_bus).await;
        cmx.wait_state("running").await;
        Stack {
            names,
            cmx,
            provider,
            kpc,
        }
    }

    /// A device request to `/config/json[/<name>]`, answered by the provider with
    /// `(config_id, content)`; returns the device's response.
    pub async fn fetch(
        &mut self,
        endpoint_id: &str,
        app_version: &str,
        resource_path: &str,
        request_id: i32,
        payload: &[u8],
        (config_id, content): (&str, &str),
    ) -> Delivered {
        self.kpc
            .send(
                endpoint_id,
                app_version,
                resource_path,
                Some(request_id),
                payload,
            )
            .await;
        let received = self.provider.next_request().await;
        self.provider
            .answer_config(&received, config_id, content)
            .await;
        let delivered = self.kpc.next().await;
        assert_eq!(delivered.message.request_id, Some(request_id));
        delivered
    }
}

/// The scenario of a CMX running with `max-endpoints-per-event: 3` (the example CMX
/// and the custom CMX both pass it): a `connected` event listing four endpoints is
/// dropped (no 6/CDTP request for any of them) and `check_dropped` runs (the caller
/// checks its counters); one listing three catches each of them up; a device request
/// from the fourth endpoint is still served; `check_dropped` runs again.
pub async fn oversized_elce_event_is_dropped(
    names: &Names,
    provider: &mut FakeProvider,
    kpc: &mut FakeKpc,
    check_dropped: impl Fn(),
) {
    let eps: Vec<String> = (1..=4).map(|n| names.endpoint(n)).collect();
    let list: Vec<(&str, &str)> = eps.iter().map(|e| (e.as_str(), APP_V1)).collect();
    // Four endpoints: over the limit, dropped: no CDTP request for any of them.
    kpc.connected(&list).await;
    provider.expect_no_request().await;
    check_dropped();
    // Three: within the limit, each endpoint is caught up.
    kpc.connected(&list[..3]).await;
    for _ in 0..3 {
        let r = provider.next_request().await;
        provider.answer_config(&r, "c1", r#"{"a":1}"#).await;
    }
    for _ in 0..3 {
        assert_eq!(kpc.next().await.json()["configId"], "c1");
    }
    // And device requests are still served.
    kpc.send(&eps[3], APP_V1, "/config/json", Some(7), b"{}")
        .await;
    let r = provider.next_request().await;
    provider.answer_config(&r, "c1", r#"{"a":1}"#).await;
    let answer = kpc.next().await;
    assert_eq!(
        (answer.message.request_id, answer.message.status_code),
        (Some(7), 200)
    );
    check_dropped();
}
