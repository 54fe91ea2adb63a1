//! A minimal MQTT 3.1.1 client's packets, for driving thousands of device
//! connections from one test or bench process cheaply: CONNECT, QoS 0 PUBLISH and a
//! packet reader, nothing else (no subscriptions: Kaa devices never subscribe).
//!
//! Used by `examples/benches/e2e_fanout.rs` (10,000 devices), [`crate::fault`]
//! (1,000 reconnecting devices) and the official Python client's wire
//! ([`crate::e2e::official_python`]). Tests that need a full client use rumqttc.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Appends MQTT's variable-length "remaining length" encoding of `n`.
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

/// Appends a length-prefixed MQTT string.
fn mqtt_string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A clean-session CONNECT with `keep_alive` seconds (0: none) and no credentials.
pub fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_string(b"MQTT", &mut body);
    body.push(4); // 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&keep_alive.to_be_bytes());
    mqtt_string(client_id.as_bytes(), &mut body);
    let mut p = vec![0x10];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(&body);
    p
}

/// A QoS 0 PUBLISH of `payload` to `topic`.
pub fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_string(topic.as_bytes(), &mut body);
    body.extend_from_slice(payload);
    let mut p = vec![0x30];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(&body);
    p
}

/// Reads one packet: (first byte, body). Give it a buffered reader when many small
/// packets arrive together, so that one system call usually brings a whole packet.
pub async fn read_packet<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let first = r.read_u8().await?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = r.read_u8().await?;
        len |= ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(std::io::Error::other("bad remaining length"));
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    Ok((first, body))
}
