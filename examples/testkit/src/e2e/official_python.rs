//! A device built on Kaa's official Python MQTT client, byte for byte on the wire.
//!
//! Source: kaaproject/mqtt-client-python (paho-mqtt ~1.5.1, `requirements.txt`), read
//! at commit 6dc768b (2025-08-13). Every topic and payload below is the one the
//! client builds, with the file it comes from; app version and token are the
//! client's parameters, everything else is literal. Python's `json.dumps` writes
//! `", "` and `": "` separators and `null` for `None`, so the payloads keep them.
//!
//! What the client does on the wire (paho-mqtt 1.5.1 defaults, as
//! `KaaMqttClient.__init__` and `connect` use them):
//! - CONNECT: MQTT 3.1.1, clean session, keep-alive 60 (`client.connect(host, port, 60)`),
//!   no credentials; the client ID is empty when `KaaMqttClient` gets none
//!   (`mqtt.Client(client_id=None)`: paho sends a zero-length ID for 3.1.1).
//! - Every PUBLISH is QoS 0, not retained (`client.publish(topic, payload)`).
//! - It never sends SUBSCRIBE: handlers are `message_callback_add` filters on
//!   whatever the server sends, so its configuration arrives only because KPC
//!   delivers to the session that owns the token.
//! - It never requests a configuration: it waits for the push on
//!   `…/config/json/status` and answers on `…/applied/json` (no request ID).

use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, timeout};

use crate::e2e::{System, WAIT};
use crate::mini_mqtt::{connect_packet, publish_packet, read_packet};

/// `kaa_mqtt_client/mqtt_topics.py`, `KaaClientTopicsConfig.get_binary_token_topic`:
/// `f"kp1/{self.application_version}/bcx/{self.token}/token"`. Published by
/// `KaaMqttClient.connect` (`get_binary_upload_token`) right after CONNECT, with
/// `payload=None` (zero bytes).
pub fn binary_token_topic(app: &str, token: &str) -> String {
    format!("kp1/{app}/bcx/{token}/token")
}

/// `kaa_mqtt_client/mqtt_topics.py`, `get_configuration_status_topic`:
/// `f"kp1/{self.application_version}/cmx/{self.token}/config/json/status"`, the only
/// topic `configuration_handler` listens on.
pub fn configuration_status_topic(app: &str, token: &str) -> String {
    format!("kp1/{app}/cmx/{token}/config/json/status")
}

/// `kaa_mqtt_client/mqtt_topics.py`, `get_configuration_status_reply_topic`:
/// `f"kp1/{self.application_version}/cmx/{self.token}/applied/json"` (no request ID).
pub fn configuration_status_reply_topic(app: &str, token: &str) -> String {
    format!("kp1/{app}/cmx/{token}/applied/json")
}

/// `kaa_mqtt_client/mqtt_topics.py`, `get_ota_configuration_status_reply_topic`:
/// `f"kp1/{self.application_version}/cmx_ota/{self.token}/applied/json"`.
pub fn ota_configuration_status_reply_topic(app: &str, token: &str) -> String {
    format!("kp1/{app}/cmx_ota/{token}/applied/json")
}

/// `kaa_mqtt_client/configuration.py`, `ConfigurationResponse(config_id).to_json()`:
/// what `configuration_handler` publishes when the handler returns the library's
/// default response for a success (`status_code=None`, `reason_phrase=None`).
pub fn applied_default(config_id: &str) -> String {
    format!(r#"{{"configId": "{config_id}", "statusCode": null, "reasonPhrase": null}}"#)
}

/// `kaa_mqtt_client/configuration.py`, `apply_configuration`: a handler that raised
/// is answered `ConfigurationResponse(configuration.config_id, 500,
/// reason_phrase=str(e))`. `reason` must need no JSON escaping.
pub fn applied_failed(config_id: &str, reason: &str) -> String {
    format!(r#"{{"configId": "{config_id}", "statusCode": 500, "reasonPhrase": "{reason}"}}"#)
}

/// `examples/simple_client/main.py`: `kaa_client.publish_ota_config(Configuration(configId=SW_VERSION))`
/// with `SW_VERSION = "0.0.1"`; `Configuration.to_dict` drops falsy values, so the
/// payload is `{"configId": "0.0.1"}`.
pub const OTA_REPORT: &str = r#"{"configId": "0.0.1"}"#;

/// One PUBLISH the device received.
#[derive(Debug)]
pub struct Received {
    /// The topic.
    pub topic: String,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

/// A raw MQTT 3.1.1 connection that sends exactly what the official client sends.
pub struct OfficialClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl OfficialClient {
    /// TCP connect, CONNECT (clean session, keep-alive 60, empty client ID) and
    /// CONNACK 0 within [`WAIT`].
    pub async fn connect(sys: System) -> OfficialClient {
        let stream = timeout(WAIT, TcpStream::connect(sys.mqtt))
            .await
            .expect("TCP connect in time")
            .expect("TCP connect");
        let _ = stream.set_nodelay(true);
        let (reader, mut writer) = stream.into_split();
        writer
            .write_all(&connect_packet("", 60))
            .await
            .expect("CONNECT sent");
        let mut reader = BufReader::new(reader);
        let (first, body) = timeout(WAIT, read_packet(&mut reader))
            .await
            .expect("CONNACK in time")
            .expect("CONNACK read");
        assert_eq!(
            (first, body.as_slice()),
            (0x20, &[0u8, 0][..]),
            "CONNACK accepted"
        );
        OfficialClient { reader, writer }
    }

    /// A QoS 0 PUBLISH, as paho's `client.publish(topic, payload)` sends it.
    pub async fn publish(&mut self, topic: &str, payload: &[u8]) {
        self.writer
            .write_all(&publish_packet(topic, payload))
            .await
            .expect("PUBLISH sent");
    }

    /// The next PUBLISH on `topic` within [`WAIT`]; others received meanwhile are
    /// skipped (paho hands them to `on_message`, which only logs them). A QoS 1
    /// PUBLISH is acknowledged, as paho does.
    pub async fn expect(&mut self, topic: &str) -> Received {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(read) = timeout(left, read_packet(&mut self.reader)).await else {
                panic!("nothing on {topic} within {WAIT:?}");
            };
            let (first, body) =
                read.unwrap_or_else(|e| panic!("connection lost waiting on {topic}: {e}"));
            if first >> 4 != 3 {
                continue;
            }
            let received = self.take_publish(first, &body).await;
            if received.topic == topic {
                return received;
            }
        }
    }

    /// Everything received within `window`.
    pub async fn drain(&mut self, window: Duration) -> Vec<Received> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(Ok((first, body))) =
            tokio::time::timeout_at(deadline, read_packet(&mut self.reader)).await
        {
            if first >> 4 == 3 {
                out.push(self.take_publish(first, &body).await);
            }
        }
        out
    }

    async fn take_publish(&mut self, first: u8, body: &[u8]) -> Received {
        let qos = (first >> 1) & 0x03;
        let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let topic = String::from_utf8(body[2..2 + len].to_vec()).expect("UTF-8 topic");
        let mut rest = &body[2 + len..];
        if qos > 0 {
            let pkid = [rest[0], rest[1]];
            rest = &rest[2..];
            self.writer
                .write_all(&[0x40, 0x02, pkid[0], pkid[1]])
                .await
                .expect("PUBACK sent");
        }
        Received {
            topic,
            payload: rest.to_vec(),
        }
    }
}
