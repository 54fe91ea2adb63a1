//! A minimal MQTT 3.1.1 client, what the KPC mode's devices need and nothing
//! else: CONNECT, PUBLISH at QoS 0 and 1 (waiting for PUBACK), PUBACK for what the
//! server sends at QoS 1, DISCONNECT, and dropping the connection without one. It
//! never subscribes: Kaa devices do not, and a KPC delivers to the session anyway.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

/// A PUBLISH the server sent.
#[derive(Debug, Clone)]
pub(crate) struct Incoming {
    pub(crate) topic: String,
    pub(crate) qos: u8,
    pub(crate) payload: Vec<u8>,
}

/// One device connection.
pub(crate) struct Device {
    writer: Arc<Mutex<OwnedWriteHalf>>,
    publishes: mpsc::UnboundedReceiver<Incoming>,
    acks: mpsc::UnboundedReceiver<u16>,
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

fn parse_publish(first: u8, body: &[u8]) -> Option<(Incoming, Option<u16>)> {
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
    Some((
        Incoming {
            topic,
            qos,
            payload,
        },
        packet_id,
    ))
}

impl Device {
    /// Connects to `addr` (`host:port`) with a clean session and `client_id`;
    /// fails unless the server accepts (CONNACK 0) within `timeout`.
    pub(crate) async fn connect(
        addr: &str,
        client_id: &str,
        timeout: Duration,
    ) -> Result<Self, String> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("MQTT connect to {addr}: timed out"))?
            .map_err(|e| format!("MQTT connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut body = Vec::new();
        mqtt_string(b"MQTT", &mut body);
        body.push(4); // 3.1.1
        body.push(0x02); // clean session
        body.extend_from_slice(&60u16.to_be_bytes()); // keep-alive
        mqtt_string(client_id.as_bytes(), &mut body);
        write
            .write_all(&packet(0x10, &body))
            .await
            .map_err(|e| format!("MQTT CONNECT to {addr}: {e}"))?;
        let mut read = BufReader::new(read);
        let (first, body) = tokio::time::timeout(timeout, read_packet(&mut read))
            .await
            .map_err(|_| format!("MQTT: no CONNACK from {addr} within {timeout:?}"))?
            .map_err(|e| format!("MQTT: reading the CONNACK from {addr}: {e}"))?;
        if first != 0x20 || body.len() != 2 || body[1] != 0 {
            return Err(format!(
                "MQTT: {addr} refused the connection (packet {first:#04x}, {body:?})"
            ));
        }
        let writer = Arc::new(Mutex::new(write));
        let (publishes_tx, publishes) = mpsc::unbounded_channel();
        let (acks_tx, acks) = mpsc::unbounded_channel();
        let reader = {
            let writer = Arc::clone(&writer);
            tokio::spawn(async move {
                while let Ok((first, body)) = read_packet(&mut read).await {
                    match first >> 4 {
                        3 => {
                            let Some((incoming, packet_id)) = parse_publish(first, &body) else {
                                return;
                            };
                            if let Some(id) = packet_id {
                                let [hi, lo] = id.to_be_bytes();
                                let ack = if incoming.qos == 1 {
                                    packet(0x40, &[hi, lo])
                                } else {
                                    packet(0x50, &[hi, lo]) // PUBREC; the kit never sees QoS 2
                                };
                                let _ = writer.lock().await.write_all(&ack).await;
                            }
                            let _ = publishes_tx.send(incoming);
                        }
                        4 if body.len() >= 2 => {
                            let _ = acks_tx.send(u16::from_be_bytes([body[0], body[1]]));
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
            reader,
            next_id: 0,
            timeout,
        })
    }

    /// Publishes at QoS 0 or 1; at QoS 1 waits for the PUBACK.
    pub(crate) async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: u8,
    ) -> Result<(), String> {
        let mut body = Vec::new();
        mqtt_string(topic.as_bytes(), &mut body);
        let id = if qos > 0 {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            body.extend_from_slice(&self.next_id.to_be_bytes());
            Some(self.next_id)
        } else {
            None
        };
        body.extend_from_slice(payload);
        self.writer
            .lock()
            .await
            .write_all(&packet(0x30 | (qos.min(1) << 1), &body))
            .await
            .map_err(|e| format!("MQTT PUBLISH to {topic}: {e}"))?;
        if let Some(id) = id {
            let deadline = tokio::time::Instant::now() + self.timeout;
            loop {
                match tokio::time::timeout_at(deadline, self.acks.recv()).await {
                    Ok(Some(acked)) if acked == id => break,
                    Ok(Some(_)) => continue,
                    _ => {
                        return Err(format!(
                            "no PUBACK for the QoS 1 PUBLISH to {topic} within {:?}",
                            self.timeout
                        ));
                    }
                }
            }
        }
        Ok(())
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
