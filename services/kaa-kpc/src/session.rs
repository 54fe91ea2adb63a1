//! One MQTT connection: CONNECT, then a loop over packets from the device,
//! deliveries from the bus side, the keep-alive deadline and shutdown.
//!
//! Everything a session does is in one task; writes go straight to the socket
//! (bounded by `write-timeout`). See the [module docs](super) for the rules.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use kaa_ism::avro::Encode;
use kaa_kp::{ErrorResponse, ResponseKind};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Error as CodecError, Protocol, QoS, valid_filter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::Shared;
use super::admission::Admission;
use super::hub::{Claim, Command, SessionHandle};
use super::route::{self, Rejection, RouteLimits};

/// Room for a PUBLISH's topic (2-byte length + up to 65,535 bytes) and packet
/// identifier on top of `max-payload`.
const PUBLISH_OVERHEAD: usize = 2 + kaa_kp::MAX_TOPIC_LEN + 2;
/// Deliveries queued for one session before the bus side drops them.
const COMMAND_QUEUE: usize = 256;
/// The most resources per session whose last request QoS is remembered for pushes.
const MAX_REMEMBERED_RESOURCES: usize = 1024;
/// How long a session waits for its `connected` event to be published before it
/// forwards the request anyway.
const CONNECTED_EVENT_WAIT: Duration = Duration::from_secs(5);

/// Why a session ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The client sent DISCONNECT.
    Disconnect,
    /// The TCP connection closed or failed.
    Dropped,
    /// No packet within 1.5 × the client's keep-alive.
    KeepAlive,
    /// The client broke the MQTT protocol.
    Violation(String),
    /// Another connection with the same client ID.
    TakenOver,
    /// The client did not read what KPC wrote in time.
    WriteTimeout,
    /// KPC is shutting down.
    Shutdown,
    /// CONNECT was refused (CONNACK with an error code was sent).
    Refused(&'static str),
    /// No CONNECT within `connect-timeout`.
    ConnectTimeout,
    /// The handshake was evicted to make room for a newer connection.
    Evicted,
}

impl End {
    fn reason(&self) -> &'static str {
        match self {
            End::Disconnect => "disconnect",
            End::Dropped => "dropped",
            End::KeepAlive => "keep_alive",
            End::Violation(_) => "protocol_violation",
            End::TakenOver => "taken_over",
            End::WriteTimeout => "write_timeout",
            End::Shutdown => "shutdown",
            End::Refused(_) => "refused",
            End::ConnectTimeout => "connect_timeout",
            End::Evicted => "evicted",
        }
    }
}

/// An endpoint this session has used.
#[derive(Debug, Clone)]
struct SessionEndpoint {
    endpoint_id: Arc<str>,
    /// The app version the token was resolved for (and last used with).
    app_version: Arc<str>,
}

/// `(endpoint ID, extension instance, request ID)`.
type PendingKey = (Arc<str>, String, i32);

/// A request waiting for its ExtensionData.
#[derive(Debug)]
struct Pending {
    /// The request topic as the device sent it.
    topic: String,
    /// The QoS to answer with.
    qos: QoS,
    /// After this, the answer is no longer delivered.
    expires: Instant,
}

/// Serves one accepted TCP connection until it ends; returns why it ended.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    admission: Admission,
) {
    let _ = stream.set_nodelay(true);
    shared.metrics.connection_opened();
    let (reader, writer) = stream.into_split();
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let handle = SessionHandle {
        id: shared.hub.next_session_id(),
        tx,
        kill: Arc::new(Notify::new()),
    };
    tracing::Span::current().record("session", handle.id);
    let max_packet = shared.settings.max_payload.saturating_add(PUBLISH_OVERHEAD);
    let mut session = Session {
        shared: Arc::clone(&shared),
        admission,
        handle,
        rx,
        shutdown,
        client_id: String::new(),
        reader,
        writer,
        rbuf: BytesMut::with_capacity(4096),
        wbuf: BytesMut::with_capacity(4096),
        max_packet,
        keep_alive: None,
        last_packet: Instant::now(),
        tokens: HashMap::new(),
        by_endpoint: HashMap::new(),
        pending: HashMap::new(),
        last_qos: HashMap::new(),
        next_pkid: 0,
        unacked: HashSet::new(),
        qos2_incoming: HashSet::new(),
    };
    let end = session.run().await;
    // Counted first: whoever sees the connection close or the event may look.
    shared.metrics.connection_closed(end.reason());
    // Best effort: whatever is queued (e.g. a refusing CONNACK) goes out first.
    let _ = session.flush().await;
    let _ = session.writer.shutdown().await;
    let released = shared.hub.end_session(
        session.handle.id,
        &session.client_id,
        session.tokens.values().map(|e| &e.endpoint_id),
    );
    match &end {
        End::Violation(why) => {
            tracing::info!(%peer, reason = %why, endpoints = released.len(), "protocol violation; connection closed")
        }
        End::Refused(why) => tracing::info!(%peer, reason = why, "CONNECT refused"),
        // Counted; one line each would flood the log under a flood of sockets.
        End::ConnectTimeout | End::Evicted => {
            tracing::debug!(%peer, reason = end.reason(), "handshake ended")
        }
        End::Disconnect => {
            tracing::debug!(%peer, endpoints = released.len(), "session ended by DISCONNECT")
        }
        other => {
            tracing::info!(%peer, reason = other.reason(), endpoints = released.len(), "session ended")
        }
    }
}

/// The largest CONNECT a refused connection may send (client ID, will, login).
const MAX_REFUSED_CONNECT: usize = 64 * 1024;

/// Answers a connection past `max-connections`: reads its CONNECT (within
/// `timeout`), writes CONNACK 0x03 (server unavailable) and closes it, as MQTT
/// 3.1.1 (3.2.2.3) prescribes. Anything else, or nothing in time: closed.
pub(crate) async fn refuse_unavailable(mut stream: TcpStream, timeout: Duration) {
    let refuse = async {
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            match Packet::read(&mut buf, MAX_REFUSED_CONNECT) {
                Ok(Packet::Connect(_)) => {
                    let mut out = BytesMut::new();
                    let connack =
                        Packet::ConnAck(ConnAck::new(ConnectReturnCode::ServiceUnavailable, false));
                    if connack.write(&mut out, usize::MAX).is_ok() {
                        let _ = stream.write_all(&out).await;
                    }
                    return;
                }
                Err(CodecError::InsufficientBytes(_)) => {}
                Ok(_) | Err(_) => return,
            }
            if buf.first().is_some_and(|&b| b >> 4 != 1) {
                return;
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(timeout, refuse).await;
    let _ = tokio::time::timeout(timeout, stream.shutdown()).await;
}

struct Session {
    shared: Arc<Shared>,
    /// The handshake slot, then the `max-connections` permit.
    admission: Admission,
    handle: SessionHandle,
    rx: mpsc::Receiver<Command>,
    shutdown: watch::Receiver<bool>,
    client_id: String,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    rbuf: BytesMut,
    wbuf: BytesMut,
    max_packet: usize,
    /// 1.5 × the client's keep-alive; `None` when the client asked for none.
    keep_alive: Option<Duration>,
    last_packet: Instant,
    /// Endpoint token → endpoint.
    tokens: HashMap<String, SessionEndpoint>,
    /// Endpoint ID → the token last used for it (push topics need the token).
    by_endpoint: HashMap<Arc<str>, String>,
    pending: HashMap<PendingKey, Pending>,
    /// `(endpoint, extension, resource path)` → QoS of the last request: the QoS
    /// of pushes to that resource.
    last_qos: HashMap<(Arc<str>, String, String), QoS>,
    next_pkid: u16,
    /// Packet identifiers of QoS 1 deliveries waiting for PUBACK.
    unacked: HashSet<u16>,
    /// Packet identifiers of QoS 2 requests waiting for PUBREL.
    qos2_incoming: HashSet<u16>,
}

/// Checks the fixed header's flags (MQTT 3.1.1, 2.2.2): reserved flags must be as
/// the specification lists them, or the connection is closed.
fn check_fixed_header(byte: u8) -> Result<(), String> {
    let (packet_type, flags) = (byte >> 4, byte & 0x0F);
    let ok = match packet_type {
        3 => true, // PUBLISH: DUP, QoS, RETAIN; QoS 3 is rejected by the codec
        6 | 8 | 10 => flags == 0b0010,
        1..=14 => flags == 0,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid fixed header 0x{byte:02x} (packet type {packet_type}, flags 0b{flags:04b})"
        ))
    }
}

/// The connect flags byte of a complete CONNECT frame, if it can be found.
fn connect_flags(frame: &[u8]) -> Option<u8> {
    // Skip the fixed header: type byte and 1–4 bytes of remaining length.
    let mut i = 1;
    while *frame.get(i)? & 0x80 != 0 {
        i += 1;
    }
    i += 1;
    let name_len = usize::from(u16::from_be_bytes([*frame.get(i)?, *frame.get(i + 1)?]));
    // Protocol name, then the level byte, then the flags.
    frame.get(i + 2 + name_len + 1).copied()
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Responses go out at the request's QoS; KPC does not send QoS 2.
fn response_qos(qos: QoS) -> QoS {
    match qos {
        QoS::AtMostOnce => QoS::AtMostOnce,
        QoS::AtLeastOnce | QoS::ExactlyOnce => QoS::AtLeastOnce,
    }
}

/// The reason phrase for an error status without one.
fn default_reason(status_code: i32) -> String {
    u16::try_from(status_code)
        .ok()
        .and_then(|c| axum::http::StatusCode::from_u16(c).ok())
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
        .to_owned()
}

impl Session {
    async fn run(&mut self) -> End {
        let connect_timeout = self.shared.settings.connect_timeout;
        let evicted = self.admission.eviction();
        let mut shutdown = self.shutdown.clone();
        let connect = tokio::select! {
            read = tokio::time::timeout(connect_timeout, self.read_connect()) => match read {
                Ok(Ok(connect)) => connect,
                Ok(Err(end)) => return end,
                Err(_) => {
                    self.shared.metrics.handshake_dropped("timeout");
                    return End::ConnectTimeout;
                }
            },
            () = evicted => return End::Evicted,
            _ = shutdown.changed() => return End::Shutdown,
        };
        if let Err(end) = self.accept_connect(connect).await {
            return end;
        }
        match self.serve_packets().await {
            Ok(()) => End::Disconnect,
            Err(end) => end,
        }
    }

    /// Reads from the socket into the read buffer; `Err(Dropped)` at EOF.
    async fn fill(&mut self) -> Result<(), End> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(4096);
        }
        match self.reader.read_buf(&mut self.rbuf).await {
            Ok(0) | Err(_) => Err(End::Dropped),
            Ok(_) => Ok(()),
        }
    }

    /// The next complete packet in the read buffer, if there is one.
    fn parse_buffered(&mut self) -> Result<Option<Packet>, End> {
        let Some(&first) = self.rbuf.first() else {
            return Ok(None);
        };
        check_fixed_header(first).map_err(End::Violation)?;
        match Packet::read(&mut self.rbuf, self.max_packet) {
            Ok(packet) => {
                self.last_packet = Instant::now();
                Ok(Some(packet))
            }
            Err(CodecError::InsufficientBytes(_)) => Ok(None),
            Err(CodecError::PayloadSizeLimitExceeded(len)) => Err(End::Violation(format!(
                "packet of {len} bytes exceeds the limit of {} bytes",
                self.max_packet
            ))),
            Err(e) => Err(End::Violation(format!("malformed packet: {e}"))),
        }
    }

    async fn read_connect(&mut self) -> Result<Connect, End> {
        loop {
            if let Some(&first) = self.rbuf.first() {
                if first >> 4 != 1 {
                    return Err(End::Violation("the first packet is not CONNECT".into()));
                }
                if let Ok(header) = rumqttc::mqttbytes::check(self.rbuf.iter(), self.max_packet) {
                    let frame = self.rbuf.get(..header.frame_length()).unwrap_or_default();
                    if let Some(flags) = connect_flags(frame) {
                        if flags & 0x01 != 0 {
                            return Err(End::Violation("CONNECT reserved flag is set".into()));
                        }
                        if flags & 0x40 != 0 && flags & 0x80 == 0 {
                            return Err(End::Violation(
                                "CONNECT has a password but no username".into(),
                            ));
                        }
                    }
                }
                match Packet::read(&mut self.rbuf, self.max_packet) {
                    Ok(Packet::Connect(c)) if c.protocol == Protocol::V4 => {
                        self.last_packet = Instant::now();
                        return Ok(c);
                    }
                    Ok(Packet::Connect(_))
                    | Err(CodecError::InvalidProtocol | CodecError::InvalidProtocolLevel(_)) => {
                        self.queue(&Packet::ConnAck(ConnAck::new(
                            ConnectReturnCode::RefusedProtocolVersion,
                            false,
                        )));
                        return Err(End::Refused(
                            "unsupported protocol version (KPC speaks MQTT 3.1.1)",
                        ));
                    }
                    Ok(_) => return Err(End::Violation("the first packet is not CONNECT".into())),
                    Err(CodecError::InsufficientBytes(_)) => {}
                    Err(e) => return Err(End::Violation(format!("malformed CONNECT: {e}"))),
                }
            }
            self.fill().await?;
        }
    }

    async fn accept_connect(&mut self, connect: Connect) -> Result<(), End> {
        let shared = Arc::clone(&self.shared);
        let credentials = &shared.settings.credentials;
        if !credentials.is_anonymous() {
            match &connect.login {
                None => {
                    shared.metrics.error("auth");
                    return self.refuse(ConnectReturnCode::NotAuthorized, "no credentials");
                }
                Some(login) if !credentials.check(&login.username, &login.password) => {
                    shared.metrics.error("auth");
                    return self.refuse(
                        ConnectReturnCode::BadUserNamePassword,
                        "bad username or password",
                    );
                }
                Some(_) => {}
            }
        }
        if connect.client_id.is_empty() {
            if !connect.clean_session {
                return self.refuse(
                    ConnectReturnCode::BadClientId,
                    "empty client ID without clean session",
                );
            }
            self.client_id = format!("kpc-assigned-{}", self.handle.id);
        } else {
            self.client_id = connect.client_id;
        }
        tracing::Span::current().record("client_id", self.client_id.as_str());
        // CONNECT and authentication done: the handshake slot becomes one of the
        // `max-connections` permits, if one is left.
        if !self.admission.establish() {
            shared.metrics.connection_rejected();
            return self.refuse(
                ConnectReturnCode::ServiceUnavailable,
                "kpc.mqtt.max-connections reached",
            );
        }
        self.keep_alive = (connect.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
        // No session state survives a connection: session present is always 0.
        self.queue(&Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            false,
        )));
        self.flush().await?;
        self.shared
            .hub
            .register_client(&self.client_id, &self.handle);
        tracing::debug!(keep_alive = connect.keep_alive, "connected");
        Ok(())
    }

    fn refuse(&mut self, code: ConnectReturnCode, why: &'static str) -> Result<(), End> {
        self.queue(&Packet::ConnAck(ConnAck::new(code, false)));
        Err(End::Refused(why))
    }

    async fn serve_packets(&mut self) -> Result<(), End> {
        let kill = Arc::clone(&self.handle.kill);
        loop {
            while let Some(packet) = self.parse_buffered()? {
                if self.handle_packet(packet).await? {
                    return Ok(());
                }
            }
            self.flush().await?;
            let deadline = self.keep_alive.map(|k| self.last_packet + k);
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(4096);
            }
            tokio::select! {
                read = self.reader.read_buf(&mut self.rbuf) => match read {
                    Ok(0) | Err(_) => return Err(End::Dropped),
                    Ok(_) => {}
                },
                Some(command) = self.rx.recv() => {
                    self.handle_command(command);
                    // Take whatever else is queued before writing.
                    while let Ok(command) = self.rx.try_recv() {
                        self.handle_command(command);
                    }
                }
                () = kill.notified() => return Err(End::TakenOver),
                _ = self.shutdown.changed() => return Err(End::Shutdown),
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => return Err(End::KeepAlive),
            }
        }
    }

    /// Handles one packet; `Ok(true)` on DISCONNECT.
    async fn handle_packet(&mut self, packet: Packet) -> Result<bool, End> {
        match packet {
            Packet::Publish(publish) => self.handle_publish(publish).await?,
            Packet::PubAck(ack) => {
                self.unacked.remove(&ack.pkid);
            }
            Packet::PubRel(rel) => {
                self.qos2_incoming.remove(&rel.pkid);
                self.queue(&Packet::PubComp(PubComp::new(rel.pkid)));
            }
            // KPC never sends QoS 2: nothing to do for these.
            Packet::PubRec(_) | Packet::PubComp(_) => {}
            Packet::Subscribe(subscribe) => {
                // Accepted, but delivery does not depend on it: KPC delivers to
                // the session that owns the endpoint.
                let codes = subscribe
                    .filters
                    .iter()
                    .map(|f| {
                        if valid_filter(&f.path) && !f.path.contains('\0') {
                            SubscribeReasonCode::Success(response_qos(f.qos))
                        } else {
                            SubscribeReasonCode::Failure
                        }
                    })
                    .collect();
                self.queue(&Packet::SubAck(SubAck::new(subscribe.pkid, codes)));
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.queue(&Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)));
            }
            Packet::PingReq => self.queue(&Packet::PingResp),
            Packet::Disconnect => return Ok(true),
            Packet::Connect(_) => return Err(End::Violation("a second CONNECT".into())),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Err(End::Violation(
                    "a packet only a server may send (CONNACK, SUBACK, UNSUBACK or PINGRESP)"
                        .into(),
                ));
            }
        }
        Ok(false)
    }

    async fn handle_publish(&mut self, publish: Publish) -> Result<(), End> {
        let topic = &publish.topic;
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return Err(End::Violation(format!(
                "PUBLISH topic {:?} is empty or holds a wildcard or NUL",
                topic.chars().take(64).collect::<String>()
            )));
        }
        if publish.qos == QoS::ExactlyOnce {
            if self.qos2_incoming.contains(&publish.pkid) {
                // A retransmission before PUBREL: already handled.
                self.queue(&Packet::PubRec(PubRec::new(publish.pkid)));
                return Ok(());
            }
            if self.qos2_incoming.len() >= self.shared.settings.max_inflight {
                return Err(End::Violation(
                    "too many QoS 2 messages waiting for PUBREL".into(),
                ));
            }
            self.qos2_incoming.insert(publish.pkid);
        }
        let mark = self.wbuf.len();
        self.route_publish(&publish).await;
        // The acknowledgement goes out before any error response KPC queued while
        // routing (it is sent after the ClientData is on the bus).
        let answers = self.wbuf.split_off(mark);
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.queue(&Packet::PubAck(PubAck::new(publish.pkid))),
            QoS::ExactlyOnce => self.queue(&Packet::PubRec(PubRec::new(publish.pkid))),
        }
        self.wbuf.extend_from_slice(&answers);
        Ok(())
    }

    /// Answers a request KPC rejects itself, when its topic carries a request ID.
    /// Without one the device cannot be told (1/KP: no response): the refusal is
    /// counted in `kpc_refused_without_request_id_total` and logged with the
    /// request's correlation ID and endpoint (when the token resolved), never the
    /// payload.
    fn reject(
        &mut self,
        topic: &str,
        qos: QoS,
        rejection: &Rejection,
        correlation_id: &str,
        endpoint_id: Option<&str>,
    ) {
        self.shared.metrics.message_in("rejected");
        self.shared.metrics.error(rejection.kind);
        let (status_code, reason) = (rejection.status_code, rejection.reason.as_str());
        let Some((response, payload)) = rejection.response(topic) else {
            self.shared.metrics.refused(rejection.kind);
            tracing::info!(
                "correlationId" = %correlation_id,
                endpointId = %endpoint_id.unwrap_or(""),
                status = status_code,
                reason = rejection.kind,
                detail = reason,
                "device request refused; no request ID, so the device is not told"
            );
            return;
        };
        tracing::debug!(topic, status_code, reason, "request rejected");
        self.publish(response, payload, response_qos(qos), "error");
    }

    async fn route_publish(&mut self, publish: &Publish) {
        let shared = Arc::clone(&self.shared);
        let qos = response_qos(publish.qos);
        let raw_topic = publish.topic.as_str();
        let limits = RouteLimits {
            extension_instances: &shared.settings.extension_instances,
            max_payload: shared.settings.max_payload,
            max_endpoints: shared.settings.max_endpoints,
        };
        // The ClientData's, and the refusal's in the log when there is none.
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let topic = match route::check_request(
            raw_topic,
            publish.payload.len(),
            &limits,
            |token| self.tokens.contains_key(token),
            self.tokens.len(),
        ) {
            Ok(t) => t,
            Err(r) => return self.reject(raw_topic, qos, &r, &correlation_id, None),
        };
        let ext = topic.extension_instance_name();
        let endpoint = match self
            .resolve(topic.app_version_name(), topic.endpoint_token())
            .await
        {
            Ok(e) => e,
            Err(e) => {
                let kind = if e.status_code() == 503 {
                    "token_resolution"
                } else {
                    "unknown_token"
                };
                let r = Rejection::new(e.status_code(), e.to_string(), kind);
                return self.reject(raw_topic, qos, &r, &correlation_id, None);
            }
        };
        if let Claim::New(published) =
            self.shared
                .hub
                .claim(&endpoint.endpoint_id, &endpoint.app_version, &self.handle)
        {
            // `connected` before the first ClientData, so that extensions learn of
            // the session before its first request.
            let _ = tokio::time::timeout(CONNECTED_EVENT_WAIT, published).await;
        }
        let endpoint_id = Arc::clone(&endpoint.endpoint_id);
        // After the token: a token the session used is connected, whatever
        // extension the request named.
        if let Err(r) = route::check_extension(&topic, &limits) {
            return self.reject(raw_topic, qos, &r, &correlation_id, Some(&endpoint_id));
        }
        let request_id = topic.request_id();
        let now = Instant::now();
        if request_id.is_some() && self.pending.len() >= shared.settings.max_inflight {
            self.pending.retain(|_, p| p.expires > now);
            if self.pending.len() >= shared.settings.max_inflight {
                let reason = format!(
                    "too many requests in flight (limit {})",
                    shared.settings.max_inflight
                );
                let r = Rejection::new(429, reason, "too_many_requests");
                return self.reject(raw_topic, qos, &r, &correlation_id, Some(&endpoint_id));
            }
        }
        let timeout = shared.settings.request_timeout;
        let routed = route::client_data(
            &topic,
            &endpoint.endpoint_id,
            &publish.payload,
            correlation_id.clone(),
            now_millis(),
            i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX),
        );
        let (subject, data) = match routed {
            Ok(x) => x,
            Err(r) => {
                return self.reject(raw_topic, qos, &r, &correlation_id, Some(&endpoint_id));
            }
        };
        let datum = bytes::Bytes::from(data.to_vec());
        if let Err(e) = self
            .shared
            .bus
            .publish_message(&subject, Some(&shared.settings.reply_to), datum)
            .await
        {
            tracing::warn!(error = %e, subject, "could not forward ClientData");
            let r = Rejection::new(503, "the extension service is unreachable", "bus");
            return self.reject(raw_topic, qos, &r, &correlation_id, Some(&endpoint_id));
        }
        shared.metrics.message_in("request");
        if let Some(id) = request_id {
            self.pending.insert(
                (Arc::clone(&endpoint_id), ext.to_owned(), id.get()),
                Pending {
                    topic: raw_topic.to_owned(),
                    qos,
                    expires: now + timeout,
                },
            );
        }
        let resource = (
            endpoint_id,
            ext.to_owned(),
            topic.resource_path().to_owned(),
        );
        if self.last_qos.len() < MAX_REMEMBERED_RESOURCES || self.last_qos.contains_key(&resource) {
            if !self.last_qos.contains_key(&resource) {
                // For a CMX that restarts while this session stays up.
                shared
                    .hub
                    .note_resource(&resource.0, self.handle.id, &resource.1, &resource.2);
            }
            self.last_qos.insert(resource, qos);
        }
    }

    /// The endpoint behind a token: from this session's cache, else from the
    /// resolver (cached for the session's lifetime, per app version).
    async fn resolve(
        &mut self,
        app_version: &str,
        token: &str,
    ) -> Result<SessionEndpoint, super::resolver::ResolveError> {
        if let Some(e) = self.tokens.get(token)
            && &*e.app_version == app_version
        {
            return Ok(e.clone());
        }
        let resolved = self.shared.resolver.resolve(app_version, token).await?;
        let endpoint = SessionEndpoint {
            endpoint_id: resolved.endpoint_id.into(),
            app_version: app_version.into(),
        };
        if let Some(previous) = self.tokens.insert(token.to_owned(), endpoint.clone())
            && previous.endpoint_id != endpoint.endpoint_id
            && self
                .by_endpoint
                .get(&previous.endpoint_id)
                .is_some_and(|t| t == token)
        {
            self.by_endpoint.remove(&previous.endpoint_id);
        }
        self.by_endpoint
            .insert(Arc::clone(&endpoint.endpoint_id), token.to_owned());
        Ok(endpoint)
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Deliver(data) => self.deliver(&data),
        }
    }

    /// Delivers an ExtensionData for an endpoint of this session.
    fn deliver(&mut self, data: &kaa_esp::ExtensionData<'_>) {
        let metrics = &self.shared.metrics;
        let Some(endpoint_id) = data.endpoint_id.as_deref() else {
            metrics.extension_data("unmatched");
            return;
        };
        let Some(token) = self.by_endpoint.get(endpoint_id).cloned() else {
            metrics.extension_data("no_session");
            return;
        };
        let Some(endpoint) = self.tokens.get(&token).cloned() else {
            metrics.extension_data("no_session");
            return;
        };
        let kind = ResponseKind::for_status_code(data.status_code);
        let ext = data.extension_instance_name.as_deref();
        let (topic, qos, out_kind) = match data.request_id {
            Some(request_id) => {
                let pending = match ext {
                    Some(ext) => self.pending.remove(&(
                        Arc::clone(&endpoint.endpoint_id),
                        ext.to_owned(),
                        request_id,
                    )),
                    None => {
                        // An extension that does not name itself: match on
                        // endpoint and request ID alone.
                        let key = self
                            .pending
                            .keys()
                            .find(|(e, _, r)| **e == *endpoint_id && *r == request_id)
                            .cloned();
                        key.and_then(|k| self.pending.remove(&k))
                    }
                };
                let Some(pending) = pending else {
                    tracing::debug!(
                        endpoint_id,
                        request_id,
                        "ExtensionData for no pending request"
                    );
                    metrics.extension_data("unmatched");
                    return;
                };
                if pending.expires <= Instant::now() {
                    metrics.extension_data("expired");
                    return;
                }
                let out_kind = if kind == ResponseKind::Status {
                    "response"
                } else {
                    "error"
                };
                (
                    kaa_kp::response_topic(&pending.topic, kind),
                    pending.qos,
                    out_kind,
                )
            }
            None => {
                let Some(ext) = ext else {
                    metrics.extension_data("unmatched");
                    return;
                };
                let app_version = data
                    .app_version_name
                    .as_deref()
                    .unwrap_or(&endpoint.app_version);
                let topic = match kaa_kp::request_topic(
                    app_version,
                    ext,
                    &token,
                    &data.resource_path,
                    None,
                ) {
                    Ok(t) => kaa_kp::response_topic(&t, kind),
                    Err(e) => {
                        tracing::debug!(error = %e, "push with a resource path that makes no topic");
                        metrics.extension_data("unmatched");
                        return;
                    }
                };
                let qos = self
                    .last_qos
                    .get(&(
                        Arc::clone(&endpoint.endpoint_id),
                        ext.to_owned(),
                        data.resource_path.to_string(),
                    ))
                    .copied()
                    .unwrap_or(QoS::AtMostOnce);
                (topic, qos, "push")
            }
        };
        let max_payload = self.shared.settings.max_payload;
        let size = data.payload.as_deref().map_or(0, <[u8]>::len);
        if kind == ResponseKind::Status && size > max_payload {
            // Too big for this session (kpc.mqtt.max-payload): the device gets a 413
            // on the error topic rather than a packet it may not be able to take.
            tracing::warn!(
                endpoint_id,
                size,
                max_payload,
                "ExtensionData payload exceeds kpc.mqtt.max-payload; 413 sent instead"
            );
            let topic = kaa_kp::response_topic(
                topic.strip_suffix("/status").unwrap_or(&topic),
                ResponseKind::Error,
            );
            let reason = format!(
                "payload of {size} bytes exceeds the MQTT payload limit of {max_payload} bytes"
            );
            let payload = ErrorResponse::new(413, reason).to_json();
            self.publish(topic, payload, qos, "error");
            self.shared.metrics.extension_data("too_large");
            return;
        }
        let payload = match kind {
            ResponseKind::Status => data.payload.as_deref().unwrap_or_default().to_vec(),
            ResponseKind::Error => ErrorResponse::new(
                data.status_code,
                data.reason_phrase
                    .as_deref()
                    .map_or_else(|| default_reason(data.status_code), str::to_owned),
            )
            .to_json(),
        };
        if self.publish(topic, payload, qos, out_kind) {
            self.shared.metrics.extension_data("delivered");
        } else {
            self.shared.metrics.extension_data("inflight_full");
        }
    }

    /// Queues a PUBLISH to the device; false if a QoS 1 delivery finds the
    /// in-flight window full.
    fn publish(&mut self, topic: String, payload: Vec<u8>, qos: QoS, kind: &'static str) -> bool {
        let mut publish = Publish::new(topic, qos, payload);
        if qos != QoS::AtMostOnce {
            if self.unacked.len() >= self.shared.settings.max_inflight {
                tracing::debug!("QoS 1 window full; delivery dropped");
                return false;
            }
            loop {
                self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
                if !self.unacked.contains(&self.next_pkid) {
                    break;
                }
            }
            self.unacked.insert(self.next_pkid);
            publish.pkid = self.next_pkid;
        }
        self.queue(&Packet::Publish(publish));
        self.shared.metrics.message_out(kind);
        true
    }

    fn queue(&mut self, packet: &Packet) {
        if let Err(e) = packet.write(&mut self.wbuf, usize::MAX) {
            tracing::warn!(error = %e, "could not encode an MQTT packet");
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let timeout = self.shared.settings.write_timeout;
        let result = tokio::time::timeout(timeout, self.writer.write_all(&self.wbuf)).await;
        self.wbuf.clear();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Dropped),
            Err(_) => Err(End::WriteTimeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::route::trailing_request_id;
    use super::*;
    use kaa_kp::RequestId;

    #[test]
    fn fixed_header_flags() {
        assert!(check_fixed_header(0x10).is_ok()); // CONNECT
        assert!(check_fixed_header(0x11).is_err());
        assert!(check_fixed_header(0x82).is_ok()); // SUBSCRIBE
        assert!(check_fixed_header(0x80).is_err());
        assert!(check_fixed_header(0x62).is_ok()); // PUBREL
        assert!(check_fixed_header(0x3b).is_ok()); // PUBLISH DUP QoS 1 RETAIN
        assert!(check_fixed_header(0xc0).is_ok()); // PINGREQ
        assert!(check_fixed_header(0xc1).is_err());
        assert!(check_fixed_header(0x00).is_err());
        assert!(check_fixed_header(0xf0).is_err());
    }

    #[test]
    fn connect_flags_are_found() {
        let mut buf = BytesMut::new();
        let mut c = Connect::new("dev");
        c.set_login("u", "p");
        Packet::Connect(c).write(&mut buf, usize::MAX).unwrap();
        assert_eq!(connect_flags(&buf), Some(0b1100_0010));
        assert_eq!(connect_flags(&[0x10]), None);
        assert_eq!(connect_flags(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x7f]), None);
    }

    #[test]
    fn request_ids_at_the_end_of_any_topic() {
        assert_eq!(
            trailing_request_id("kp1/a//t/config/7").map(RequestId::get),
            Some(7)
        );
        assert_eq!(trailing_request_id("x/42").map(RequestId::get), Some(42));
        assert!(trailing_request_id("kp1/a/c/t/config/07").is_none());
        assert!(trailing_request_id("kp1/a/c/t/config").is_none());
        assert_eq!(default_reason(404), "Not Found");
        assert_eq!(default_reason(799), "Error");
    }
}
