//! A whole CMX in one file, from the protocol crates alone: the `kaa-cmp` engine
//! driven through its documented inputs, over a `kaa-bus` bus. No code of the
//! example services is used.
//!
//! ```sh
//! cargo run -p kaa-examples --bin custom_cmx                        # in memory, with a demo
//! cargo run -p kaa-examples --bin custom_cmx -- nats://127.0.0.1:4222  # serve a real stack
//! ```
//!
//! In memory it plays a configuration provider and one device request against
//! itself and prints the answer; on NATS it serves the CMX instance `cmx` for the
//! provider `ecr` and the communication service `kpc` until ctrl-c.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kaa_bus::{Bus, BusError, MemoryBus, NatsBus, NatsConfig};
use kaa_cmp::{Cmx, CmxConfig, Input};
use kaa_ism::UnixMillis;
use kaa_ism::avro::{Decode, Encode};

/// Serves `cmx` on `bus` until `shutdown` resolves; returns the engine.
pub async fn serve(
    mut cmx: Cmx,
    bus: Arc<dyn Bus>,
    shutdown: impl Future<Output = ()>,
) -> Result<Cmx, BusError> {
    // 1. Every subject the engine needs, with its queue group.
    let mut subscriptions = Vec::new();
    for (filter, queue_group) in cmx.subscriptions().all() {
        subscriptions.push(bus.subscribe(filter.as_str(), queue_group).await?);
    }
    let mut messages = futures::stream::select_all(subscriptions);
    kaa_bus::subscription_barrier(bus.as_ref(), Duration::from_secs(5)).await?;
    // 2. Subscriptions in effect: the engine asks for the sessions already up.
    let mut epoch = bus.connection_epoch();
    cmx.handle_input(Input::BusConnected, now());
    publish(&mut cmx, bus.as_ref()).await;
    let mut reconnects = tokio::time::interval(Duration::from_millis(250));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // 3. Sleep until the engine's deadline, if it has one.
        let deadline = cmx.poll_timeout();
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep(at.saturating_duration_since(now())).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => return Ok(cmx),
            message = messages.next() => {
                let Some(m) = message else { return Err(BusError::Closed) };
                if m.no_responders {
                    continue; // a NATS status, not a message
                }
                // 4. Decode with the configuration's limits, then handle.
                match cmx.decode_input(&m.subject, m.reply_to.as_deref(), &m.payload) {
                    Ok(input) => cmx.handle_input(input, now()),
                    Err(e) if e.is_unused() => {}
                    Err(e) => eprintln!("custom_cmx: {} dropped: {e}", m.subject),
                }
            }
            () = timer => cmx.handle_input(Input::Timeout, now()),
            _ = reconnects.tick() => {
                if bus.connection_epoch() == epoch {
                    continue;
                }
                // Broadcasts sent during the outage are lost: resync, ask again.
                epoch = bus.connection_epoch();
                cmx.handle_input(Input::BusConnected, now());
            }
        }
        // 5. Publish everything the engine asked for.
        publish(&mut cmx, bus.as_ref()).await;
    }
}

async fn publish(cmx: &mut Cmx, bus: &dyn Bus) {
    while let Some(output) = cmx.poll_output() {
        let datum = Bytes::from(output.to_datum());
        if let Err(e) = bus
            .publish_message(output.subject(), output.reply_to(), datum)
            .await
        {
            eprintln!("custom_cmx: publish to {} failed: {e}", output.subject());
        }
    }
    // Requests refused without a request ID: the device cannot be told.
    while let Some(r) = cmx.poll_refusal() {
        eprintln!(
            "custom_cmx: refused {} from {:?} on {} ({}, {}): {}",
            r.correlation_id, r.endpoint_id, r.resource_path, r.status_code, r.reason, r.detail
        );
    }
}

/// The engine never reads the clock: its driver does.
fn now() -> UnixMillis {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    UnixMillis(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cmx = Cmx::new(CmxConfig::new("cmx", "cmx-1", "ecr", "kpc"))?;
    if let Some(url) = std::env::args().nth(1) {
        let bus: Arc<dyn Bus> = Arc::new(NatsBus::connect(&NatsConfig::new([url])).await?);
        println!("custom_cmx: serving `cmx` on NATS until ctrl-c");
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        serve(cmx, bus, ctrl_c).await?;
        return Ok(());
    }
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    // A provider with one configuration for everyone (6/CDTP).
    let mut requests = bus
        .subscribe("kaa.v1.service.ecr.cdtp.request", None)
        .await?;
    let provider_bus = Arc::clone(&bus);
    tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            let (Ok(request), Some(reply_to)) =
                (kaa_cdtp::ConfigRequest::decode(&m.payload), m.reply_to)
            else {
                continue;
            };
            let current = kaa_cdtp::Current::Config {
                config_id: "demo-1",
                content: br#"{"sampling":5}"#,
            };
            let answer = kaa_cdtp::ConfigResponse::answer(&request, current, now().0);
            let _ = provider_bus
                .publish(&reply_to, answer.to_vec().into())
                .await;
        }
    });
    // A communication service's side: listen for answers, forward one request.
    let mut answers = bus
        .subscribe("kaa.v1.service.kpc.esp.ExtensionData", None)
        .await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let engine = tokio::spawn(serve(cmx, Arc::clone(&bus), async {
        let _ = stopped.await;
    }));
    kaa_bus::subscription_barrier(bus.as_ref(), Duration::from_secs(5)).await?;
    let request = kaa_esp::ClientData {
        correlation_id: "demo".into(),
        timestamp: now().0,
        app_version_name: "kettle-v1".into(),
        endpoint_id: Some("kettle-1".into()),
        resource_path: "/config/json".into(),
        request_id: Some(1),
        payload: br#"{"observe":true}"#.as_slice().into(),
        ..Default::default()
    };
    bus.publish("kaa.v1.service.cmx.esp.ClientData", request.to_vec().into())
        .await?;
    let answer = answers.next().await.ok_or("the bus closed")?;
    let answer = kaa_esp::ExtensionData::decode(&answer.payload)?;
    let payload = String::from_utf8_lossy(answer.payload.as_deref().unwrap_or_default());
    println!("device kettle-1 got {} {payload}", answer.status_code);
    let _ = stop.send(());
    let cmx = engine.await??;
    println!("engine stats: {:?}", cmx.stats());
    Ok(())
}
