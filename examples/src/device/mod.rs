//! The device simulator behind the `device` binary: one device talking 7/CMP over
//! 1/KP MQTT ([`run_device`]), or many at once measuring latency ([`run_load`]).
//!
//! The protocol side is [`kaa_cmp::device::Device`] (topics, request IDs, held
//! configurations, retries, applied reports); this module only moves its messages
//! over MQTT with [`rumqttc`] and prints what happens. Like Kaa's own client, the
//! simulated devices do not SUBSCRIBE unless told to (`subscribe`), since KPC
//! delivers responses and pushes to the session that owns the endpoint anyway.
//!
//! ```no_run
//! use kaa_examples::device::{Connection, Decision, DeviceOptions, run_device};
//!
//! # async fn demo() -> Result<(), kaa_examples::device::DeviceCliError> {
//! let connection = Connection::new("127.0.0.1", 1884);
//! let mut options = DeviceOptions::new(connection, "smart-kettle-v3", "cmx", "JTjdbENzHh");
//! options.decision = Decision::Apply;
//! options.once = true;
//! let summary = run_device(&options, &mut std::io::stdout()).await?;
//! assert_eq!(summary.configurations, 1);
//! # Ok(()) }
//! ```
//!
//! Output of [`run_device`], one line per event (stable, for people and scripts):
//!
//! ```text
//! connected to 127.0.0.1:1884 as device-JTjdbENzHh
//! request kp1/smart-kettle-v3/cmx/JTjdbENzHh/config/json/1 {"observe":true}
//! configuration default id=c1 (response): {"rate":5}
//! applied default id=c1
//! configuration default id=c2 (push): {"rate":6}
//! rejected default id=c2 status=400 reason=WPA2 is not supported
//! error network config 404 No such configuration
//! ```
//!
//! Devices can be told to reject some configurations ([`RejectRules`]: a stable
//! share by hash of token and config ID, or JSON Pointer conditions), so a
//! staged rollout can be watched failing; the rule that decided is the reason:
//!
//! ```text
//! rejected default id=c3 status=400 reason=reject-if: /wifi/security is "WPA2"
//! rejected default id=c4 status=400 reason=reject-rate 0.1: this device rejects configuration c4 (draw 0.0412)
//! ```
//!
//! With [`DeviceOptions::deltas`] the requests go to `…/config/json-patch[/<name>]`
//! (pointers, if any, in the request) and a patch the device cannot use is
//! told before it asks again:
//!
//! ```text
//! request kp1/smart-kettle-v3/cmx/JTjdbENzHh/config/json-patch/1 {"observe":true,"pointers":["/rate"]}
//! configuration default id=c1 (response): {"/rate":5}
//! delta refused default: the patch starts from configuration "c0", the device holds "c1"
//! ```

pub mod cli;
pub mod provision;
pub mod reject;

pub use reject::{RejectIf, RejectRules};

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kaa_cmp::device::{Device, DeviceConfig, DeviceError, DeviceEvent, Publish};
use kaa_cmp::resource::ResourceKind;
use kaa_service::now;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS};

/// Why the simulator stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceCliError {
    /// A name does not make a valid topic, or similar.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The MQTT connection failed or was refused.
    #[error("MQTT: {0}")]
    Mqtt(#[from] ConnectionError),
    /// The MQTT client could not queue a request.
    #[error("MQTT client: {0}")]
    Client(#[from] rumqttc::ClientError),
    /// Nothing final arrived in time (one-shot mode).
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Writing the output failed.
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
}

/// Where and how to connect.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Connection {
    /// MQTT host.
    pub host: String,
    /// MQTT port.
    pub port: u16,
    /// CONNECT username and password.
    pub credentials: Option<(String, String)>,
    /// MQTT keep-alive (whole seconds, at least 1).
    pub keep_alive: Duration,
    /// QoS of every publish (0 or 1; 2 is sent as 1).
    pub qos: QoS,
    /// SUBSCRIBE to the device's topics (needed behind a real broker, not with KPC).
    pub subscribe: bool,
}

impl Connection {
    /// `host:port`, anonymous, keep-alive 30 s, QoS 0, no SUBSCRIBE.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Connection {
            host: host.into(),
            port,
            credentials: None,
            keep_alive: Duration::from_secs(30),
            qos: QoS::AtMostOnce,
            subscribe: false,
        }
    }

    fn options(&self, client_id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_keep_alive(Duration::from_secs(self.keep_alive.as_secs().max(1)));
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u.clone(), p.clone());
        }
        o.set_max_packet_size(1 << 20, 1 << 20);
        o
    }

    fn qos(&self) -> QoS {
        match self.qos {
            QoS::AtMostOnce => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        }
    }
}

/// What the device does with a configuration it receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Report it applied (status 200).
    Apply,
    /// Report it rejected with this status code and reason.
    Reject {
        /// A non-2xx status code.
        status_code: i32,
        /// The reason phrase.
        reason: String,
    },
    /// Ask on standard input: `y` applies, `n` rejects, any other text rejects
    /// with that text as the reason; end of input reports nothing.
    Ask,
    /// Report nothing.
    Ignore,
}

/// One interactive device.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeviceOptions {
    /// The connection.
    pub connection: Connection,
    /// MQTT client ID (default `device-<token>`).
    pub client_id: String,
    /// App version name.
    pub app_version: String,
    /// Extension instance name (Kaa's default `cmx`).
    pub extension: String,
    /// Endpoint token.
    pub token: String,
    /// Configuration names to request (`None`: the default configuration).
    pub names: Vec<Option<String>>,
    /// `observe` in each request (`None`: not sent).
    pub observe: Option<bool>,
    /// What to do with configurations.
    pub decision: Decision,
    /// Stop once every requested name has its answer (and its report is sent).
    pub once: bool,
    /// One-shot mode: fail after this long without every answer.
    pub timeout: Duration,
    /// How long a request waits before it is sent again (the device's retry).
    pub request_timeout: Duration,
    /// Ask for configuration deltas on `…/config/json-patch[/<name>]` (kaa-rs
    /// extension, [`kaa_cmp::delta`]): patches applied and checked against
    /// their config ID by [`Device`]; a refused patch is printed as
    /// `delta refused <name>: <why>` and the configuration asked for again.
    pub deltas: bool,
    /// With `deltas`: watch only these parts (RFC 6901 JSON Pointers) of every
    /// requested configuration; empty: the whole configuration. Configurations
    /// printed are then views (`{"<pointer>": <part>, …}`), with the whole
    /// configuration's ID.
    pub pointers: Vec<kaa_cmp::delta::PointerBuf>,
    /// Configurations rejected whatever [`decision`](Self::decision) says
    /// (`--reject-rate`, `--reject-if`), with the rule that decided as the
    /// reason; the others go through `decision`. Default: none.
    pub reject: RejectRules,
}

impl DeviceOptions {
    /// Requests the default configuration with `observe: true`, asks what to do,
    /// runs until interrupted.
    pub fn new(
        connection: Connection,
        app_version: impl Into<String>,
        extension: impl Into<String>,
        token: impl Into<String>,
    ) -> Self {
        let token = token.into();
        DeviceOptions {
            connection,
            client_id: format!("device-{token}"),
            app_version: app_version.into(),
            extension: extension.into(),
            token,
            names: vec![None],
            observe: Some(true),
            decision: Decision::Ask,
            once: false,
            timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            deltas: false,
            pointers: Vec::new(),
            reject: RejectRules::default(),
        }
    }
}

/// What a [`run_device`] session saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunSummary {
    /// New configurations received (responses and pushes).
    pub configurations: usize,
    /// "Unchanged" answers.
    pub unchanged: usize,
    /// Error answers.
    pub errors: usize,
    /// Applied reports sent.
    pub applied: usize,
    /// Rejected reports sent.
    pub rejected: usize,
    /// Delta answers the device could not use and asked again for
    /// ([`DeviceEvent::DeltaRefused`]).
    pub deltas_refused: usize,
}

fn name_of(name: &Option<String>) -> &str {
    name.as_deref().unwrap_or("default")
}

fn resource_of(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Config => "config",
        ResourceKind::Applied => "applied",
    }
}

/// One line from standard input (`None` at its end), read on a blocking thread.
async fn read_line() -> Option<String> {
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        match std::io::stdin().read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line),
        }
    })
    .await
    .ok()
    .flatten()
}

/// Connects and waits for CONNACK (and SUBACK when subscribing).
async fn connect(
    connection: &Connection,
    client_id: &str,
    subscriptions: Vec<String>,
) -> Result<(AsyncClient, EventLoop), DeviceCliError> {
    let (client, mut eventloop) = AsyncClient::new(connection.options(client_id), 256);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await? {
            break;
        }
    }
    if connection.subscribe {
        for s in subscriptions {
            client.subscribe(s, QoS::AtLeastOnce).await?;
        }
    }
    Ok((client, eventloop))
}

async fn send_all(
    client: &AsyncClient,
    device: &mut Device,
    qos: QoS,
    out: &mut impl Write,
    verbose: bool,
) -> Result<usize, DeviceCliError> {
    let mut sent = 0;
    while let Some(Publish { topic, payload }) = device.poll_publish() {
        if verbose {
            writeln!(out, "request {topic} {}", String::from_utf8_lossy(&payload))?;
        }
        client.publish(topic, qos, false, payload).await?;
        sent += 1;
    }
    Ok(sent)
}

/// Runs one device: connects, requests the configurations, prints responses and
/// pushes as they arrive and reports each configuration applied or rejected as
/// `options.decision` says. Runs until ctrl-c, or with `once` until every name
/// has its answer.
pub async fn run_device(
    options: &DeviceOptions,
    out: &mut impl Write,
) -> Result<RunSummary, DeviceCliError> {
    let mut config = DeviceConfig::new(
        options.app_version.clone(),
        options.extension.clone(),
        options.token.clone(),
    );
    config.request_timeout = options.request_timeout;
    config.deltas = options.deltas;
    let mut device = Device::new(config)?;
    if options.deltas && !options.pointers.is_empty() {
        for name in &options.names {
            device.set_pointers(name.as_deref(), Some(options.pointers.clone()))?;
        }
    }
    let (client, mut eventloop) = connect(
        &options.connection,
        &options.client_id,
        device.subscriptions(),
    )
    .await?;
    // The event loop runs in a task of its own: `EventLoop::poll` must not be
    // cancelled half-way through a write, which a `select!` here could do.
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let pump = tokio::spawn(async move {
        loop {
            let event = eventloop.poll().await;
            let stop = event.is_err();
            if events_tx.send(event).is_err() || stop {
                break;
            }
        }
    });
    let result = drive(options, &mut device, &client, &mut events, out).await;
    pump.abort();
    result
}

async fn drive(
    options: &DeviceOptions,
    device: &mut Device,
    client: &AsyncClient,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    out: &mut impl Write,
) -> Result<RunSummary, DeviceCliError> {
    let qos = options.connection.qos();
    writeln!(
        out,
        "connected to {}:{} as {}",
        options.connection.host, options.connection.port, options.client_id
    )?;
    let mut waiting: Vec<Option<String>> = Vec::new();
    for name in &options.names {
        device.request_config(name.as_deref(), options.observe, now())?;
        let canonical = name.clone().filter(|n| n != "default");
        if !waiting.contains(&canonical) {
            waiting.push(canonical);
        }
    }
    send_all(client, device, qos, out, true).await?;
    let mut summary = RunSummary::default();
    let deadline = tokio::time::Instant::now() + options.timeout;
    let mut closing = false;
    loop {
        // Events first: print, decide, report.
        while let Some(event) = device.poll_event() {
            match event {
                DeviceEvent::Configuration {
                    name,
                    config_id,
                    config,
                    pushed,
                } => {
                    summary.configurations += 1;
                    let how = if pushed { "push" } else { "response" };
                    writeln!(
                        out,
                        "configuration {} id={config_id} ({how}): {config}",
                        name_of(&name)
                    )?;
                    out.flush()?;
                    let rejected = options.reject.decide(&options.token, &config_id, &config);
                    let decision = match (&options.decision, rejected) {
                        // `configId` "" is "no configuration": nothing to apply.
                        _ if config_id.is_empty() => Decision::Ignore,
                        (_, Some((status_code, reason))) => Decision::Reject {
                            status_code,
                            reason,
                        },
                        (Decision::Ask, None) => {
                            eprint!(
                                "apply configuration {config_id} of {}? [y: applied / n: rejected / text: rejected with that reason] ",
                                name_of(&name)
                            );
                            match read_line().await {
                                Some(line) => match line.trim() {
                                    "" | "y" | "Y" | "yes" => Decision::Apply,
                                    "n" | "N" | "no" => Decision::Reject {
                                        status_code: 400,
                                        reason: "rejected by the operator".into(),
                                    },
                                    reason => Decision::Reject {
                                        status_code: 400,
                                        reason: reason.to_owned(),
                                    },
                                },
                                _ => Decision::Ignore,
                            }
                        }
                        (d, None) => d.clone(),
                    };
                    match decision {
                        Decision::Apply => {
                            device.report_applied(name.as_deref(), &config_id, now())?;
                            summary.applied += 1;
                            writeln!(out, "applied {} id={config_id}", name_of(&name))?;
                        }
                        Decision::Reject {
                            status_code,
                            reason,
                        } => {
                            device.report_rejected(
                                name.as_deref(),
                                &config_id,
                                status_code,
                                &reason,
                                now(),
                            )?;
                            summary.rejected += 1;
                            writeln!(
                                out,
                                "rejected {} id={config_id} status={status_code} reason={reason}",
                                name_of(&name)
                            )?;
                        }
                        Decision::Ask | Decision::Ignore => {}
                    }
                    waiting.retain(|w| *w != name);
                }
                DeviceEvent::Unchanged { name } => {
                    summary.unchanged += 1;
                    writeln!(out, "unchanged {}", name_of(&name))?;
                    waiting.retain(|w| *w != name);
                }
                DeviceEvent::Error {
                    name,
                    resource,
                    status_code,
                    reason_phrase,
                    retrying,
                } => {
                    summary.errors += 1;
                    let retry = if retrying { " (retrying)" } else { "" };
                    writeln!(
                        out,
                        "error {} {} {status_code} {reason_phrase}{retry}",
                        name_of(&name),
                        resource_of(resource)
                    )?;
                    if !retrying {
                        waiting.retain(|w| *w != name);
                    }
                }
                DeviceEvent::DeltaRefused { name, error } => {
                    summary.deltas_refused += 1;
                    writeln!(out, "delta refused {}: {error}", name_of(&name))?;
                }
                other => writeln!(out, "event {other:?}")?,
            }
        }
        send_all(client, device, qos, out, false).await?;
        out.flush()?;
        if options.once && waiting.is_empty() && !closing {
            // Everything is answered and reported: disconnect after the reports.
            client.disconnect().await?;
            closing = true;
        }
        let retry_at = device.poll_timeout();
        let sleep_until = retry_at.map(|at| {
            let wait = at.saturating_duration_since(now());
            tokio::time::Instant::now() + wait
        });
        tokio::select! {
            event = events.recv() => match event.unwrap_or(Err(ConnectionError::RequestsDone)) {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Err(e) = device.handle_publish(&p.topic, &p.payload, now()) {
                        writeln!(out, "ignored {}: {e}", p.topic)?;
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) if closing => return Ok(summary),
                Ok(_) => {}
                Err(e) if closing => {
                    tracing::debug!(error = %e, "connection closed");
                    return Ok(summary);
                }
                Err(e) => return Err(e.into()),
            },
            () = async {
                match sleep_until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => device.handle_timeout(now()),
            () = tokio::time::sleep_until(deadline), if options.once => {
                return Err(DeviceCliError::Timeout(options.timeout));
            }
            _ = tokio::signal::ctrl_c(), if !options.once => {
                client.disconnect().await?;
                closing = true;
            }
        }
    }
}

/// Many devices at once ([`run_load`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LoadOptions {
    /// The connection every device makes.
    pub connection: Connection,
    /// App version name.
    pub app_version: String,
    /// Extension instance name.
    pub extension: String,
    /// Endpoint tokens: `{}` is replaced by the device number (1…N), e.g. `dev-{}`.
    pub token_pattern: String,
    /// Tokens given one by one (e.g. provisioned, [`provision`]): device `i`
    /// uses the `i`-th; empty: [`token_pattern`](Self::token_pattern).
    pub tokens: Vec<String>,
    /// How many devices (one MQTT connection each).
    pub devices: usize,
    /// Configuration requests per device, one after the other.
    pub requests: usize,
    /// The configuration name requested (`None`: default).
    pub name: Option<String>,
    /// How many connections are being opened at the same time.
    pub concurrency: usize,
    /// A request without an answer after this long counts as a timeout.
    pub timeout: Duration,
    /// Show a progress bar while connecting (on a terminal).
    pub progress: bool,
    /// When [active](RejectRules::is_active) (`--reject-rate`, `--reject-if`),
    /// every device reports each configuration it receives: rejected as these
    /// rules say (for the device's token), else applied. Inactive (the
    /// default): no reports, as before.
    pub reject: RejectRules,
}

impl LoadOptions {
    /// `devices` devices `dev-1`…, one request each, 64 connecting at a time, 10 s
    /// timeout.
    pub fn new(connection: Connection, app_version: impl Into<String>, devices: usize) -> Self {
        LoadOptions {
            connection,
            app_version: app_version.into(),
            extension: "cmx".into(),
            token_pattern: "dev-{}".into(),
            tokens: Vec::new(),
            devices,
            requests: 1,
            name: None,
            concurrency: 64,
            timeout: Duration::from_secs(10),
            progress: true,
            reject: RejectRules::default(),
        }
    }

    /// The token of device `i` (1-based).
    pub fn token(&self, i: usize) -> String {
        if let Some(t) = i.checked_sub(1).and_then(|k| self.tokens.get(k)) {
            return t.clone();
        }
        self.pattern_token(i)
    }

    /// Device `i`'s name from [`token_pattern`](Self::token_pattern) (1-based):
    /// its token, or with `load --provision` its endpoint ID.
    pub fn pattern_token(&self, i: usize) -> String {
        if self.token_pattern.contains("{}") {
            self.token_pattern.replace("{}", &i.to_string())
        } else {
            format!("{}{i}", self.token_pattern)
        }
    }
}

/// What a load run measured.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct LoadReport {
    /// Devices connected.
    pub connected: usize,
    /// Devices that could not connect.
    pub connect_failures: usize,
    /// Time until every device was connected (or failed).
    pub connect_time: Duration,
    /// Requests sent.
    pub requests: usize,
    /// Requests answered with a configuration or "unchanged".
    pub ok: usize,
    /// Requests answered with an error.
    pub errors: usize,
    /// Requests without an answer in time.
    pub timeouts: usize,
    /// Request → answer latency of every answered request, sorted.
    pub latencies: Vec<Duration>,
    /// Time of the request phase.
    pub request_time: Duration,
    /// Applied reports sent (only with [`LoadOptions::reject`] active).
    pub applied: usize,
    /// Rejected reports sent (only with [`LoadOptions::reject`] active).
    pub rejected: usize,
}

impl LoadReport {
    /// The `p`-th percentile (0–100) of the latencies, if any.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let rank = (p / 100.0 * self.latencies.len() as f64).ceil() as usize;
        self.latencies
            .get(rank.saturating_sub(1).min(self.latencies.len() - 1))
            .copied()
    }

    /// Writes the counts and percentiles.
    pub fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "devices: {} connected, {} failed in {:.2?}",
            self.connected, self.connect_failures, self.connect_time
        )?;
        let secs = self.request_time.as_secs_f64();
        let rate = if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        };
        writeln!(
            out,
            "requests: {} sent, {} ok, {} errors, {} timeouts in {:.2?} ({rate:.0} answers/s)",
            self.requests, self.ok, self.errors, self.timeouts, self.request_time
        )?;
        if let (Some(p50), Some(p90), Some(p99), Some(max)) = (
            self.percentile(50.0),
            self.percentile(90.0),
            self.percentile(99.0),
            self.latencies.last(),
        ) {
            writeln!(
                out,
                "latency: p50 {p50:.2?}, p90 {p90:.2?}, p99 {p99:.2?}, max {max:.2?}"
            )?;
        }
        if self.applied + self.rejected > 0 {
            writeln!(
                out,
                "reports: {} applied, {} rejected",
                self.applied, self.rejected
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct DeviceResult {
    requests: usize,
    ok: usize,
    errors: usize,
    timeouts: usize,
    latencies: Vec<Duration>,
    applied: usize,
    rejected: usize,
}

/// Runs `options.devices` devices: connects them all (`concurrency` at a time,
/// with a progress bar), then each sends `requests` configuration requests, one
/// after the other, timing request → answer.
pub async fn run_load(options: &LoadOptions) -> LoadReport {
    let n = options.devices;
    let bar = if options.progress {
        indicatif::ProgressBar::new(n as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "connecting {bar:40} {pos}/{len} devices ({per_sec}, {elapsed})",
    ) {
        bar.set_style(style);
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
    // Everyone (connected or not) meets here before the request phase starts.
    let barrier = Arc::new(tokio::sync::Barrier::new(n + 1));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=n {
        let options = options.clone();
        let permits = Arc::clone(&permits);
        let barrier = Arc::clone(&barrier);
        let bar = bar.clone();
        tasks.spawn(async move {
            let token = options.token(i);
            let connected = {
                let _permit = permits.acquire().await;
                let c = tokio::time::timeout(
                    options.timeout,
                    connect(
                        &options.connection,
                        // Never a provisioned (secret) token in a client ID.
                        &format!("load-{}", options.pattern_token(i)),
                        Vec::new(),
                    ),
                )
                .await;
                bar.inc(1);
                c
            };
            barrier.wait().await;
            match connected {
                Ok(Ok((client, eventloop))) => {
                    Some(load_device(&options, &token, client, eventloop).await)
                }
                _ => None,
            }
        });
    }
    barrier.wait().await;
    let connect_time = started.elapsed();
    bar.finish_and_clear();
    let request_start = Instant::now();
    let mut report = LoadReport {
        connect_time,
        ..LoadReport::default()
    };
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Some(r)) => {
                report.connected += 1;
                report.requests += r.requests;
                report.ok += r.ok;
                report.errors += r.errors;
                report.timeouts += r.timeouts;
                report.latencies.extend(r.latencies);
                report.applied += r.applied;
                report.rejected += r.rejected;
            }
            _ => report.connect_failures += 1,
        }
    }
    report.request_time = request_start.elapsed();
    report.latencies.sort();
    report
}

async fn load_device(
    options: &LoadOptions,
    token: &str,
    client: AsyncClient,
    mut eventloop: EventLoop,
) -> DeviceResult {
    let mut result = DeviceResult::default();
    let mut config = DeviceConfig::new(
        options.app_version.clone(),
        options.extension.clone(),
        token.to_owned(),
    );
    // No retries inside a measurement: a lost answer is a timeout.
    config.request_timeout = Duration::from_secs(3600);
    let Ok(mut device) = Device::new(config) else {
        return result;
    };
    let qos = options.connection.qos();
    let mut sink = std::io::sink();
    for _ in 0..options.requests {
        if device
            .request_config(options.name.as_deref(), None, now())
            .is_err()
        {
            break;
        }
        let sent = Instant::now();
        result.requests += 1;
        if send_all(&client, &mut device, qos, &mut sink, false)
            .await
            .is_err()
        {
            result.timeouts += 1;
            break;
        }
        let answered = tokio::time::timeout(options.timeout, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = device.handle_publish(&p.topic, &p.payload, now());
                        while let Some(e) = device.poll_event() {
                            if let DeviceEvent::Configuration {
                                name,
                                config_id,
                                config,
                                ..
                            } = &e
                            {
                                report_load(
                                    options,
                                    token,
                                    &mut device,
                                    &mut result,
                                    name,
                                    config_id,
                                    config,
                                );
                            }
                            match e {
                                DeviceEvent::Configuration { pushed: false, .. }
                                | DeviceEvent::Unchanged { .. } => return Some(true),
                                DeviceEvent::Error {
                                    resource: ResourceKind::Config,
                                    ..
                                } => return Some(false),
                                _ => {}
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
        })
        .await;
        // The reports queued with the answer.
        let _ = send_all(&client, &mut device, qos, &mut sink, false).await;
        match answered {
            Ok(Some(true)) => {
                result.ok += 1;
                result.latencies.push(sent.elapsed());
            }
            Ok(Some(false)) => {
                result.errors += 1;
                result.latencies.push(sent.elapsed());
            }
            Ok(None) | Err(_) => {
                result.timeouts += 1;
                break;
            }
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    result
}

/// With `options.reject` active, reports `config_id` applied or rejected.
fn report_load(
    options: &LoadOptions,
    token: &str,
    device: &mut Device,
    result: &mut DeviceResult,
    name: &Option<String>,
    config_id: &str,
    config: &serde_json::Value,
) {
    if !options.reject.is_active() || config_id.is_empty() {
        return;
    }
    let reported = match options.reject.decide(token, config_id, config) {
        Some((status_code, reason)) => device
            .report_rejected(name.as_deref(), config_id, status_code, &reason, now())
            .map(|()| result.rejected += 1),
        None => device
            .report_applied(name.as_deref(), config_id, now())
            .map(|()| result.applied += 1),
    };
    if let Err(e) = reported {
        tracing::debug!(error = %e, "report not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_tokens() {
        let report = LoadReport {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            ..LoadReport::default()
        };
        assert_eq!(report.percentile(50.0), Some(Duration::from_millis(50)));
        assert_eq!(report.percentile(99.0), Some(Duration::from_millis(99)));
        assert_eq!(report.percentile(100.0), Some(Duration::from_millis(100)));
        assert_eq!(report.percentile(0.0), Some(Duration::from_millis(1)));
        assert_eq!(LoadReport::default().percentile(50.0), None);
        let mut o = LoadOptions::new(Connection::new("h", 1), "v", 3);
        assert_eq!(o.token(7), "dev-7");
        o.token_pattern = "kettle-".into();
        assert_eq!(o.token(2), "kettle-2");
        let mut out = Vec::new();
        report.print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("p50 50.00ms"), "{text}");
    }
}
