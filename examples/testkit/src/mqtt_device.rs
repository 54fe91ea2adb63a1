//! A real MQTT device's connection for the tests: a rumqttc client (MQTT 3.1.1) whose
//! event loop runs in a task of its own, handing every incoming PUBLISH, mapped, to a
//! channel. Shared by [`crate::e2e::Device`] and `limits`' large-packet device, which
//! differ in options (packet size, clean session) and in what they keep of a PUBLISH.

use std::time::Duration;

use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// A connected client, the PUBLISHes it received (mapped), and its event-loop task
/// (aborted on drop).
pub struct MqttConnection<T> {
    /// The client (publish, disconnect).
    pub client: AsyncClient,
    /// Every PUBLISH received, as the mapping given to [`MqttConnection::open`] made it.
    pub incoming: mpsc::UnboundedReceiver<T>,
    task: tokio::task::JoinHandle<()>,
}

impl<T> Drop for MqttConnection<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T: Send + 'static> MqttConnection<T> {
    /// Connects with `options` (request queue of `capacity`) and waits up to `wait` for
    /// an accepted CONNACK (panics otherwise). The event loop ends when the connection
    /// fails or nobody reads `incoming` any more.
    pub async fn open(
        options: MqttOptions,
        capacity: usize,
        wait: Duration,
        map: impl Fn(Publish) -> T + Send + 'static,
    ) -> Self {
        let (client, mut eventloop) = AsyncClient::new(options, capacity);
        let (tx, incoming) = mpsc::unbounded_channel();
        let (ack_tx, ack_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ack_tx = Some(ack_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(a) = ack_tx.take() {
                            let _ = a.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(map(p)).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("device connection ended: {e}");
                        break;
                    }
                }
            }
        });
        timeout(wait, ack_rx)
            .await
            .expect("CONNACK in time")
            .expect("connection accepted");
        Self {
            client,
            incoming,
            task,
        }
    }

    /// Whether the event loop has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
