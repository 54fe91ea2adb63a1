//! The driver of a [`SessionCore`]: one MQTT connection, in a tokio task while
//! it has something to do, parked on an idle reactor while it has not.
//!
//! The driver reads and frames packets (the `mqttbytes` codec, with the checks a
//! server owes that a client codec leaves out), runs the CONNECT handshake
//! (authentication, client ID, `max-connections`), then hands every packet,
//! delivery and keep-alive timeout to the core and carries out its outputs:
//! packets to the socket, metrics, token resolution, endpoint ownership in the
//! [`Hub`](crate::hub::Hub), `ClientData` to the bus. Writes are buffered and
//! flushed when no more input is ready (bounded by `write-timeout`). See the
//! [crate docs](crate) for the rules.
//!
//! Once an established session has nothing to do (nothing half-read, nothing to
//! write, nothing in its mailbox), its task ends and the session, an
//! [`Established`] on the heap, is parked on one of the
//! [idle reactors](crate::idle), which spawns a task for it again when its socket
//! becomes readable, its mailbox gets a command, its keep-alive expires or KPC
//! stops. An idle session then holds no task and no future: its memory is the
//! `Established` (socket, core, buffers' handles), its socket's registration, its
//! mailbox and the hub's entry (`kpc_idle_memory` in BENCHMARKS.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Packet};
use rumqttc::mqttbytes::{Error as CodecError, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Close, Input, Now, Output, SessionCore};
use crate::Shared;
use crate::admission::Admission;
use crate::hub::{Claim, Command, SessionHandle};
use crate::mailbox::{Inbox, Received};

/// Room for a PUBLISH's topic (2-byte length + up to 65,535 bytes) and packet
/// identifier on top of `max-payload`.
const PUBLISH_OVERHEAD: usize = 2 + kaa_kp::MAX_TOPIC_LEN + 2;
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

impl From<Close> for End {
    fn from(close: Close) -> Self {
        match close {
            Close::Disconnect => End::Disconnect,
            Close::KeepAlive => End::KeepAlive,
            Close::Violation(why) => End::Violation(why),
        }
    }
}

/// The time now, for the core (tokio's clock, so that tests with paused time
/// see the same deadlines as the driver's timers).
fn now() -> Now {
    Now {
        instant: Instant::now().into_std(),
        wall: kaa_service::now(),
    }
}

/// Serves one accepted TCP connection: its handshake, then the session until it
/// ends or goes idle (then it is parked, see the [module docs](self)).
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    admission: Admission,
) {
    let _ = stream.set_nodelay(true);
    shared.metrics.connection_opened();
    let (tx, rx) = crate::mailbox::mailbox();
    let handle = SessionHandle {
        id: shared.hub.next_session_id(),
        tx,
    };
    tracing::Span::current().record("session", handle.id);
    let max_packet = shared
        .settings
        .session
        .max_payload
        .saturating_add(PUBLISH_OVERHEAD);
    let mut session = Session {
        shared: Arc::clone(&shared),
        admission,
        handle,
        rx,
        shutdown,
        client_id: String::new(),
        stream,
        peer,
        span: tracing::Span::current(),
        // Both start empty and grow as needed: `fill` gives the read buffer room for
        // the handshake, `serve_until_idle` drops it when empty and gives it room
        // again only once the socket is readable; the write buffer grows with what
        // is queued and is dropped when the session parks.
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        max_packet,
        last_packet: Instant::now(),
    };
    // The handshake (its timers, the CONNECT, its checks) runs in a future of its
    // own on the heap, freed once the session is established.
    let core = match Box::pin(session.handshake()).await {
        Ok(core) => core,
        Err(end) => {
            Box::pin(session.close(end, None)).await;
            return;
        }
    };
    let established = Box::new(Established { session, core });
    Box::pin(run(established, false)).await;
}

/// An established session: what a parked session is (see the [module
/// docs](self)).
pub(crate) struct Established {
    session: Session,
    core: SessionCore,
}

impl Established {
    /// When the session's keep-alive expires, if it has one.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.core.poll_timeout().map(Instant::from_std)
    }

    /// The session's number (which idle reactor parks it).
    pub(crate) fn id(&self) -> u64 {
        self.session.handle.id
    }

    /// Whether the session has something to do at once: a command or the close
    /// order in its mailbox, else `waker` is woken on the next one.
    pub(crate) fn register_mailbox(&self, waker: &std::task::Waker) -> bool {
        self.session.rx.register(waker)
    }

    /// Whether the socket is readable (or failed), else `cx`'s waker is woken
    /// when it becomes so.
    pub(crate) fn poll_readable(&self, cx: &mut std::task::Context<'_>) -> bool {
        self.session.stream.poll_read_ready(cx).is_ready()
    }

    /// A task for a parked session that has something to do again.
    pub(crate) fn resume(self: Box<Self>) -> impl Future<Output = ()> + Send + 'static {
        let span = self.session.span.clone();
        run(self, true).instrument(span)
    }
}

/// Serves an established session until it ends or goes idle; an idle one is
/// parked. `resumed`: a parked session woken up (it waits for what woke it
/// before looking for work).
async fn run(mut established: Box<Established>, resumed: bool) {
    let Established { session, core } = &mut *established;
    let end = match session.serve_until_idle(core, resumed).await {
        Ok(()) => {
            let shared = Arc::clone(&session.shared);
            match shared.idle.park(established) {
                Ok(()) => return,
                // The idle reactors have stopped: KPC is shutting down.
                Err(back) => {
                    established = back;
                    End::Shutdown
                }
            }
        }
        Err(end) => end,
    };
    let Established { session, core } = &mut *established;
    // Boxed, like the handshake: the closing state is not part of every
    // session's task.
    Box::pin(session.close(end, Some(core))).await;
}

impl Session {
    /// Ends the session: counts it, flushes what is queued, closes the socket and
    /// releases its endpoints.
    async fn close(&mut self, end: End, core: Option<&mut SessionCore>) {
        let shared = Arc::clone(&self.shared);
        let peer = self.peer;
        let session = self;
        // Counted first: whoever sees the connection close or the event may look.
        shared.metrics.connection_closed(end.reason());
        // Best effort: whatever is queued (e.g. a refusing CONNACK) goes out first.
        let _ = session.flush().await;
        let _ = session.stream.shutdown().await;
        let released = shared.hub.end_session(
            session.handle.id,
            &session.client_id,
            core.into_iter().flat_map(|c| c.endpoint_ids()),
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

/// The socket side of a session; the [`SessionCore`] is created once CONNECT
/// is accepted.
struct Session {
    shared: Arc<Shared>,
    /// The handshake slot, then the `max-connections` permit.
    admission: Admission,
    handle: SessionHandle,
    rx: Inbox,
    shutdown: watch::Receiver<bool>,
    client_id: String,
    /// One registration (not split halves: reads and writes take turns).
    stream: TcpStream,
    peer: SocketAddr,
    /// The `mqtt_session` span, entered again by a resumed session's task.
    span: tracing::Span,
    rbuf: BytesMut,
    wbuf: BytesMut,
    max_packet: usize,
    /// When the CONNECT was read.
    last_packet: Instant,
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

impl Session {
    /// Reads and answers the CONNECT, within the connect timeout, unless the
    /// handshake is evicted or KPC stops first.
    async fn handshake(&mut self) -> Result<SessionCore, End> {
        let connect_timeout = self.shared.settings.connect_timeout;
        let evicted = self.admission.eviction();
        let mut shutdown = self.shutdown.clone();
        let connect = tokio::select! {
            read = tokio::time::timeout(connect_timeout, self.read_connect()) => match read {
                Ok(Ok(connect)) => connect,
                Ok(Err(end)) => return Err(end),
                Err(_) => {
                    self.shared.metrics.handshake_dropped("timeout");
                    return Err(End::ConnectTimeout);
                }
            },
            () = evicted => return Err(End::Evicted),
            _ = shutdown.changed() => return Err(End::Shutdown),
        };
        self.accept_connect(connect).await
    }

    /// Reads from the socket into the read buffer; `Err(Dropped)` at EOF.
    async fn fill(&mut self) -> Result<(), End> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(4096);
        }
        match self.stream.read_buf(&mut self.rbuf).await {
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
            Ok(packet) => Ok(Some(packet)),
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

    /// Authenticates the CONNECT, answers it and registers the client ID; the
    /// session's core.
    async fn accept_connect(&mut self, connect: Connect) -> Result<SessionCore, End> {
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
        let keep_alive = (connect.keep_alive > 0)
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
        Ok(SessionCore::new(
            Arc::clone(&shared.settings.session),
            keep_alive,
            self.last_packet.into_std(),
            || uuid::Uuid::new_v4().to_string(),
        ))
    }

    fn refuse<T>(&mut self, code: ConnectReturnCode, why: &'static str) -> Result<T, End> {
        self.queue(&Packet::ConnAck(ConnAck::new(code, false)));
        Err(End::Refused(why))
    }

    /// Serves packets and deliveries until the session ends (`Err`) or has
    /// nothing to do (`Ok`: it may be parked). `resumed`: wait for input before
    /// looking for work (a parked session was woken because some is ready).
    ///
    /// `drive` (which may wait on the bus and the token resolver) runs boxed, so
    /// that its state is on the heap only while it runs.
    async fn serve_until_idle(
        &mut self,
        core: &mut SessionCore,
        mut resumed: bool,
    ) -> Result<(), End> {
        loop {
            if !resumed {
                while let Some(packet) = self.parse_buffered()? {
                    core.handle_input(Input::Packet(packet), now());
                    Box::pin(self.drive(core)).await?;
                }
                self.flush().await?;
                if self.rbuf.is_empty() {
                    // Nothing half-read: the buffer's room is given back while the
                    // session waits (an idle session then holds no read buffer).
                    self.rbuf = BytesMut::new();
                    if self.may_park() {
                        self.wbuf = BytesMut::new();
                        core.release_spare();
                        return Ok(());
                    }
                }
            }
            resumed = false;
            let deadline = core.poll_timeout().map(Instant::from_std);
            tokio::select! {
                ready = self.stream.readable() => {
                    if ready.is_err() {
                        return Err(End::Dropped);
                    }
                    if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                        self.rbuf.reserve(4096);
                    }
                    match self.stream.try_read_buf(&mut self.rbuf) {
                        Ok(0) => return Err(End::Dropped),
                        Ok(_) => {}
                        // Readiness can be spurious: wait again.
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return Err(End::Dropped),
                    }
                },
                received = self.rx.recv() => {
                    let Received::Command(command) = received else {
                        return Err(End::TakenOver);
                    };
                    handle_command(core, command);
                    // Take whatever else is queued before writing.
                    while let Some(received) = self.rx.try_recv() {
                        let Received::Command(command) = received else {
                            return Err(End::TakenOver);
                        };
                        handle_command(core, command);
                    }
                    Box::pin(self.drive(core)).await?;
                }
                _ = self.shutdown.changed() => return Err(End::Shutdown),
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    core.handle_input(Input::Timeout, now());
                    Box::pin(self.drive(core)).await?;
                }
            }
        }
    }

    /// Carries out the core's outputs until there are none; `Err` once it
    /// closed the session.
    async fn drive(&mut self, core: &mut SessionCore) -> Result<(), End> {
        let shared = Arc::clone(&self.shared);
        while let Some(output) = core.poll_output() {
            match output {
                Output::Transmit(packet) => self.queue(&packet),
                Output::Count(count) => shared.metrics.count(count),
                Output::Resolve { app_version, token } => {
                    let resolved = shared.resolver.resolve(&app_version, &token).await;
                    core.handle_input(Input::Resolved(resolved), now());
                }
                Output::Claim {
                    endpoint_id,
                    app_version,
                } => {
                    if let Claim::New(published) =
                        shared.hub.claim(&endpoint_id, &app_version, &self.handle)
                    {
                        // `connected` before the first ClientData, so that
                        // extensions learn of the session before its first request.
                        let _ = tokio::time::timeout(CONNECTED_EVENT_WAIT, published).await;
                    }
                    core.handle_input(Input::Claimed, now());
                }
                Output::Forward {
                    subject,
                    client_data,
                } => {
                    let reply_to = Some(shared.settings.reply_to.as_str());
                    let sent = shared
                        .bus
                        .publish_message(&subject, reply_to, client_data)
                        .await;
                    let input = match sent {
                        Ok(()) => Input::Forwarded,
                        Err(e) => {
                            tracing::warn!(error = %e, subject, "could not forward ClientData");
                            Input::ForwardFailed
                        }
                    };
                    core.handle_input(input, now());
                }
                Output::NoteResource {
                    endpoint_id,
                    extension,
                    resource_path,
                } => shared.hub.note_resource(
                    &endpoint_id,
                    self.handle.id,
                    &extension,
                    &resource_path,
                ),
                Output::Close(close) => return Err(close.into()),
            }
        }
        Ok(())
    }

    /// Whether the session may be parked: parking is on
    /// (`kpc.mqtt.park-idle-sessions`), nothing to write, nothing in its
    /// mailbox, nothing readable already (parking would only spawn its task
    /// again), KPC not stopping (a stopping session ends in its own task).
    fn may_park(&self) -> bool {
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        self.shared.settings.park_idle
            && self.wbuf.is_empty()
            && !self.rx.is_ready()
            && !self.shutdown.has_changed().unwrap_or(true)
            && !*self.shutdown.borrow()
            && self.stream.poll_read_ready(&mut cx).is_pending()
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
        let result = tokio::time::timeout(timeout, self.stream.write_all(&self.wbuf)).await;
        self.wbuf.clear();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Dropped),
            Err(_) => Err(End::WriteTimeout),
        }
    }
}

fn handle_command(core: &mut SessionCore, command: Command) {
    match command {
        Command::Deliver(data) => core.handle_input(Input::Deliver(*data), now()),
        Command::Revoke(endpoint_id) => {
            core.handle_input(Input::EndpointRevoked(&endpoint_id), now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
