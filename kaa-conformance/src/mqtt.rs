//! A minimal MQTT 3.1.1 client, what the KPC mode's devices need and nothing
//! else: CONNECT (with a username and password when the KPC requires them),
//! PUBLISH at QoS 0, 1 (waiting for PUBACK) and 2 (PUBREC, PUBREL, PUBCOMP), the
//! receiver's side of what the server sends at QoS 1 (PUBACK) and 2 (PUBREC, then
//! PUBCOMP on PUBREL; a retransmission before PUBREL is acknowledged again, not
//! delivered again), DISCONNECT, and dropping the connection without one. It
//! never subscribes: Kaa devices do not, and a KPC delivers to the session anyway.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

/// PUBACK's packet type.
pub(crate) const PUBACK: u8 = 4;
/// PUBREC's packet type.
pub(crate) const PUBREC: u8 = 5;
/// PUBREL's packet type.
pub(crate) const PUBREL: u8 = 6;
/// PUBCOMP's packet type.
pub(crate) const PUBCOMP: u8 = 7;

/// A packet type's name, for messages.
pub(crate) fn packet_name(kind: u8) -> &'static str {
    match kind {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        PUBACK => "PUBACK",
        PUBREC => "PUBREC",
        PUBREL => "PUBREL",
        PUBCOMP => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        _ => "a reserved packet type",
    }
}

/// What a CONNACK return code means (MQTT 3.1.1, 3.2.2.3).
pub(crate) fn return_code_name(code: u8) -> &'static str {
    match code {
        0 => "connection accepted",
        1 => "unacceptable protocol version",
        2 => "identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "a reserved return code",
    }
}

/// A PUBLISH the server sent.
#[derive(Debug, Clone)]
pub(crate) struct Incoming {
    pub(crate) topic: String,
    pub(crate) qos: u8,
    /// Its packet identifier (QoS 1 and 2).
    pub(crate) packet_id: Option<u16>,
    pub(crate) payload: Vec<u8>,
}

/// A CONNECT's username and password.
#[derive(Clone, Copy)]
pub(crate) struct Login<'a> {
    pub(crate) username: &'a str,
    pub(crate) password: Option<&'a str>,
}

/// One device connection.
pub(crate) struct Device {
    writer: Arc<Mutex<OwnedWriteHalf>>,
    publishes: mpsc::UnboundedReceiver<Incoming>,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP from the server: (packet type, packet
    /// identifier).
    acks: mpsc::UnboundedReceiver<(u8, u16)>,
    /// Acknowledgements read while waiting for another one.
    seen_acks: Vec<(u8, u16)>,
    reader: JoinHandle<()>,
    next_id: u16,
    timeout: Duration,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn mqtt_string(s: &[u8], out: &mut Vec<u8>) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s[..usize::from(len)]);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

/// A CONNECT with a clean session, keep-alive 60 s, `client_id` and `login`.
fn connect_packet(client_id: &str, login: Option<Login<'_>>) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_string(b"MQTT", &mut body);
    body.push(4); // 3.1.1
    let mut flags = 0x02; // clean session
    if let Some(login) = login {
        flags |= 0x80;
        if login.password.is_some() {
            flags |= 0x40;
        }
    }
    body.push(flags);
    body.extend_from_slice(&60u16.to_be_bytes()); // keep-alive
    mqtt_string(client_id.as_bytes(), &mut body);
    if let Some(login) = login {
        mqtt_string(login.username.as_bytes(), &mut body);
        if let Some(password) = login.password {
            mqtt_string(password.as_bytes(), &mut body);
        }
    }
    packet(0x10, &body)
}

/// A PUBLISH; `packet_id` is used at QoS 1 and 2 only.
pub(crate) fn publish_packet(
    topic: &str,
    payload: &[u8],
    qos: u8,
    dup: bool,
    packet_id: u16,
) -> Vec<u8> {
    let qos = qos.min(2);
    let mut body = Vec::new();
    mqtt_string(topic.as_bytes(), &mut body);
    if qos > 0 {
        body.extend_from_slice(&packet_id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    let dup = if dup && qos > 0 { 0x08 } else { 0 };
    packet(0x30 | dup | (qos << 1), &body)
}

async fn read_packet<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let first = r.read_u8().await?;
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let b = r.read_u8().await?;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(std::io::Error::other("malformed remaining length"));
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    Ok((first, body))
}

fn parse_publish(first: u8, body: &[u8]) -> Option<Incoming> {
    let qos = (first >> 1) & 0x03;
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let topic = std::str::from_utf8(body.get(2..2 + topic_len)?)
        .ok()?
        .to_owned();
    let mut at = 2 + topic_len;
    let packet_id = if qos > 0 {
        let id = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        at += 2;
        Some(id)
    } else {
        None
    };
    let payload = body.get(at..)?.to_vec();
    Some(Incoming {
        topic,
        qos,
        packet_id,
        payload,
    })
}

/// How a CONNECT the server refused ended ([`probe_refused_connect`]).
#[derive(Debug)]
pub(crate) enum Probe {
    /// CONNACK with this return code and session-present flag, then packets of
    /// these types before the server closed the connection (`closed`) or the
    /// wait ended.
    ConnAck {
        return_code: u8,
        session_present: bool,
        then: Vec<u8>,
        closed: bool,
    },
    /// A packet of this type came first, not a CONNACK.
    Other(u8),
    /// The server closed the connection without a CONNACK.
    ClosedWithoutConnAck,
}

/// Sends a CONNECT with `login` and, right behind it without waiting for the
/// CONNACK (MQTT 3.1.1, 3.1.4 lets a client), `pipelined`; then reads what the
/// server sends until it closes the connection or `within` has passed.
pub(crate) async fn probe_refused_connect(
    addr: &str,
    client_id: &str,
    login: Option<Login<'_>>,
    pipelined: &[u8],
    within: Duration,
) -> Result<Probe, String> {
    let stream = tokio::time::timeout(within, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("MQTT connect to {addr}: timed out"))?
        .map_err(|e| format!("MQTT connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut out = connect_packet(client_id, login);
    out.extend_from_slice(pipelined);
    write
        .write_all(&out)
        .await
        .map_err(|e| format!("MQTT CONNECT to {addr}: {e}"))?;
    let mut read = BufReader::new(read);
    let deadline = tokio::time::Instant::now() + within;
    let (first, body) = match tokio::time::timeout_at(deadline, read_packet(&mut read)).await {
        Err(_) => return Err(format!("MQTT: no CONNACK from {addr} within {within:?}")),
        Ok(Err(_)) => return Ok(Probe::ClosedWithoutConnAck),
        Ok(Ok(p)) => p,
    };
    if first != 0x20 || body.len() != 2 {
        return Ok(Probe::Other(first >> 4));
    }
    let (return_code, session_present) = (body[1], body[0] & 0x01 != 0);
    let mut then = Vec::new();
    let closed = loop {
        match tokio::time::timeout_at(deadline, read_packet(&mut read)).await {
            Err(_) => break false,
            Ok(Err(_)) => break true,
            Ok(Ok((first, _))) => then.push(first >> 4),
        }
    };
    drop(write);
    Ok(Probe::ConnAck {
        return_code,
        session_present,
        then,
        closed,
    })
}

impl Device {
    /// Connects to `addr` (`host:port`) with a clean session, `client_id` and
    /// `login`; fails unless the server accepts (CONNACK 0) within `timeout`.
    pub(crate) async fn connect(
        addr: &str,
        client_id: &str,
        login: Option<Login<'_>>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("MQTT connect to {addr}: timed out"))?
            .map_err(|e| format!("MQTT connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        write
            .write_all(&connect_packet(client_id, login))
            .await
            .map_err(|e| format!("MQTT CONNECT to {addr}: {e}"))?;
        let mut read = BufReader::new(read);
        let (first, body) = tokio::time::timeout(timeout, read_packet(&mut read))
            .await
            .map_err(|_| format!("MQTT: no CONNACK from {addr} within {timeout:?}"))?
            .map_err(|e| format!("MQTT: reading the CONNACK from {addr}: {e}"))?;
        if first != 0x20 || body.len() != 2 {
            return Err(format!(
                "MQTT: {addr} answered the CONNECT with {} ({first:#04x}, {body:?}), not a CONNACK",
                packet_name(first >> 4)
            ));
        }
        if body[1] != 0 {
            let anonymous = if login.is_none() {
                " (the kit connected without credentials: give them with --username and --password)"
            } else {
                ""
            };
            return Err(format!(
                "MQTT: {addr} refused the connection: CONNACK return code {} ({}){anonymous}",
                body[1],
                return_code_name(body[1])
            ));
        }
        let writer = Arc::new(Mutex::new(write));
        let (publishes_tx, publishes) = mpsc::unbounded_channel();
        let (acks_tx, acks) = mpsc::unbounded_channel();
        let reader = {
            let writer = Arc::clone(&writer);
            tokio::spawn(async move {
                // QoS 2 PUBLISHes received, waiting for PUBREL: a retransmission
                // of one gets PUBREC again and is not delivered again.
                let mut awaiting_pubrel = std::collections::HashSet::new();
                while let Ok((first, body)) = read_packet(&mut read).await {
                    match first >> 4 {
                        3 => {
                            let Some(incoming) = parse_publish(first, &body) else {
                                return;
                            };
                            let mut deliver = true;
                            if let Some(id) = incoming.packet_id {
                                let [hi, lo] = id.to_be_bytes();
                                // QoS 2: PUBREC now, PUBCOMP when PUBREL comes.
                                let kind = if incoming.qos == 1 { PUBACK } else { PUBREC };
                                if kind == PUBREC {
                                    deliver = awaiting_pubrel.insert(id);
                                }
                                let ack = packet(kind << 4, &[hi, lo]);
                                let _ = writer.lock().await.write_all(&ack).await;
                            }
                            if deliver {
                                let _ = publishes_tx.send(incoming);
                            }
                        }
                        kind @ (PUBACK | PUBREC | PUBREL | PUBCOMP) if body.len() >= 2 => {
                            let id = u16::from_be_bytes([body[0], body[1]]);
                            if kind == PUBREL {
                                awaiting_pubrel.remove(&id);
                                let [hi, lo] = id.to_be_bytes();
                                let comp = packet(PUBCOMP << 4, &[hi, lo]);
                                let _ = writer.lock().await.write_all(&comp).await;
                            }
                            let _ = acks_tx.send((kind, id));
                        }
                        _ => {}
                    }
                }
            })
        };
        Ok(Device {
            writer,
            publishes,
            acks,
            seen_acks: Vec::new(),
            reader,
            next_id: 0,
            timeout,
        })
    }

    /// A fresh packet identifier (never 0).
    pub(crate) fn next_packet_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    /// Writes raw bytes (one or more whole packets).
    pub(crate) async fn send_raw(&mut self, bytes: &[u8], what: &str) -> Result<(), String> {
        self.writer
            .lock()
            .await
            .write_all(bytes)
            .await
            .map_err(|e| format!("MQTT {what}: {e}"))
    }

    /// Sends PUBREL for `packet_id` (the second step of a QoS 2 PUBLISH).
    pub(crate) async fn send_pubrel(&mut self, packet_id: u16) -> Result<(), String> {
        let [hi, lo] = packet_id.to_be_bytes();
        // PUBREL's reserved flags are 0010 (MQTT 3.1.1, 3.6.1).
        self.send_raw(&packet((PUBREL << 4) | 0x02, &[hi, lo]), "PUBREL")
            .await
    }

    /// Waits up to `within` for the server's `kind` (PUBACK, PUBREC, PUBREL or
    /// PUBCOMP) for `packet_id`; others that come meanwhile are kept for later.
    pub(crate) async fn expect_ack(
        &mut self,
        kind: u8,
        packet_id: u16,
        within: Duration,
    ) -> Result<(), String> {
        if let Some(i) = self.seen_acks.iter().position(|a| *a == (kind, packet_id)) {
            self.seen_acks.remove(i);
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.acks.recv()).await {
                Ok(Some(a)) if a == (kind, packet_id) => return Ok(()),
                Ok(Some(a)) => self.seen_acks.push(a),
                _ => {
                    let also = if self.seen_acks.is_empty() {
                        String::new()
                    } else {
                        let seen: Vec<String> = self
                            .seen_acks
                            .iter()
                            .map(|(k, id)| format!("{} {id}", packet_name(*k)))
                            .collect();
                        format!(" (got {})", seen.join(", "))
                    };
                    return Err(format!(
                        "no {} for packet identifier {packet_id} within {within:?}{also}",
                        packet_name(kind)
                    ));
                }
            }
        }
    }

    /// Publishes at QoS 0, 1 or 2 and waits for the acknowledgements: PUBACK at
    /// QoS 1; PUBREC, then (after PUBREL) PUBCOMP at QoS 2.
    pub(crate) async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: u8,
    ) -> Result<(), String> {
        let qos = qos.min(2);
        let id = if qos > 0 { self.next_packet_id() } else { 0 };
        self.send_raw(
            &publish_packet(topic, payload, qos, false, id),
            &format!("PUBLISH to {topic}"),
        )
        .await?;
        let timeout = self.timeout;
        let at = |e: String| format!("{e}, after a QoS {qos} PUBLISH to {topic}");
        match qos {
            1 => self.expect_ack(PUBACK, id, timeout).await.map_err(at),
            2 => {
                self.expect_ack(PUBREC, id, timeout).await.map_err(at)?;
                self.send_pubrel(id).await?;
                self.expect_ack(PUBCOMP, id, timeout).await.map_err(at)
            }
            _ => Ok(()),
        }
    }

    /// The next PUBLISH from the server within `within`.
    pub(crate) async fn recv(&mut self, within: Duration) -> Option<Incoming> {
        tokio::time::timeout(within, self.publishes.recv())
            .await
            .ok()
            .flatten()
    }

    /// Sends DISCONNECT and closes the connection.
    pub(crate) async fn disconnect(self) {
        let mut w = self.writer.lock().await;
        let _ = w.write_all(&[0xe0, 0x00]).await;
        let _ = w.shutdown().await;
    }

    /// Closes the TCP connection without DISCONNECT (a device that lost power).
    pub(crate) async fn drop_connection(self) {
        let _ = self.writer.lock().await.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const WAIT: Duration = Duration::from_secs(5);

    /// A server that accepts one CONNECT; the kit's device connected to it, and
    /// the server's side of the connection.
    async fn connected() -> (Device, BufReader<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut server = BufReader::new(stream);
            let (first, _) = read_packet(&mut server).await.expect("CONNECT");
            assert_eq!(first, 0x10);
            server
                .get_mut()
                .write_all(&packet(0x20, &[0, 0]))
                .await
                .expect("CONNACK");
            server
        });
        let login = Login {
            username: "u",
            password: Some("p"),
        };
        let device = Device::connect(&addr, "c", Some(login), WAIT)
            .await
            .expect("connect");
        (device, server.await.expect("server"))
    }

    async fn expect(server: &mut BufReader<TcpStream>, first: u8, id: u16) {
        let (got, body) = tokio::time::timeout(WAIT, read_packet(server))
            .await
            .expect("in time")
            .expect("a packet");
        assert_eq!((got, body), (first, id.to_be_bytes().to_vec()));
    }

    #[test]
    fn connect_carries_the_login() {
        let login = Login {
            username: "devices",
            password: Some("pw"),
        };
        let p = connect_packet("c", Some(login));
        // Flags: username, password, clean session.
        assert_eq!(p[9], 0xc2);
        assert!(p.ends_with(b"\x00\x07devices\x00\x02pw"));
        assert_eq!(connect_packet("c", None)[9], 0x02);
    }

    #[tokio::test]
    async fn a_qos_2_publish_from_the_server_is_delivered_once_and_completed() {
        let (mut device, mut server) = connected().await;
        let publish = publish_packet("t/1/status", b"x", 2, false, 7);
        server.get_mut().write_all(&publish).await.expect("PUBLISH");
        expect(&mut server, PUBREC << 4, 7).await;
        let again = publish_packet("t/1/status", b"x", 2, true, 7);
        server.get_mut().write_all(&again).await.expect("DUP");
        expect(&mut server, PUBREC << 4, 7).await;
        let rel = packet((PUBREL << 4) | 0x02, &7u16.to_be_bytes());
        server.get_mut().write_all(&rel).await.expect("PUBREL");
        expect(&mut server, PUBCOMP << 4, 7).await;
        device
            .expect_ack(PUBREL, 7, WAIT)
            .await
            .expect("PUBREL seen");
        let p = device.recv(WAIT).await.expect("delivered");
        assert_eq!(
            (p.topic.as_str(), p.qos, p.packet_id),
            ("t/1/status", 2, Some(7))
        );
        assert!(device.recv(Duration::from_millis(100)).await.is_none());
    }

    #[tokio::test]
    async fn a_qos_2_publish_from_the_device_waits_for_pubrec_and_pubcomp() {
        let (mut device, mut server) = connected().await;
        let serve = tokio::spawn(async move {
            let (first, _) = read_packet(&mut server).await.expect("PUBLISH");
            assert_eq!(first, 0x34);
            let rec = packet(PUBREC << 4, &1u16.to_be_bytes());
            server.get_mut().write_all(&rec).await.expect("PUBREC");
            expect(&mut server, (PUBREL << 4) | 0x02, 1).await;
            let comp = packet(PUBCOMP << 4, &1u16.to_be_bytes());
            server.get_mut().write_all(&comp).await.expect("PUBCOMP");
            server
        });
        device.publish("t/1", b"{}", 2).await.expect("published");
        let _server = serve.await.expect("server");
        // Without the server's PUBREC, the publish fails and says so.
        device.timeout = Duration::from_millis(200);
        let err = Device::publish(&mut device, "t/2", b"{}", 2)
            .await
            .map_err(|e| e.contains("no PUBREC for packet identifier 2"));
        assert_eq!(err, Err(true));
    }
}
