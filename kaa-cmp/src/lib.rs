//! # kaa-cmp: Kaa 7/CMP configuration management, sans-IO
//!
//! Everything configuration management needs on both ends of the wire, with no
//! I/O, no async runtime and no clock:
//!
//! - [`message`]: the 7/CMP JSON payloads devices and servers exchange (config
//!   request, config response, applied report), strict per the RFC schemas with a
//!   few documented leniencies;
//! - [`resource`]: the resource paths `/config/json[/<name>]` and
//!   `/applied/json[/<name>]`, and what "no name" means (the `default`
//!   configuration);
//! - [`engine`]: [`Cmx`], the server side (a Configuration Management Extension)
//!   as a state machine: decoded 4/ESP, 6/CDTP and 9/ELCE messages in, messages
//!   to publish out. People build custom CMX services on it;
//! - [`device`]: [`device::Device`], the device side over 1/KP MQTT topics, for
//!   firmware and simulators.
//!
//! # Building a custom CMX
//!
//! A CMX is [`Cmx`] plus a message bus (e.g. `kaa-bus`, NATS or in memory) and a
//! clock. The engine never blocks and never reads the time: the driver gives it
//! each message with the current time, publishes what it asks for, and wakes it
//! up at the deadline it names.
//!
//! ```
//! use std::borrow::Cow;
//! use std::time::Duration;
//!
//! use kaa_cmp::{Cmx, CmxConfig, Output};
//! use kaa_ism::UnixMillis;
//! use kaa_ism::avro::Encode;
//!
//! // 1. Configuration: this CMX's names, its provider (ECR) and communication
//! //    service (KPC), limits. See `CmxConfig` for every key.
//! let mut config = CmxConfig::new("cmx", "cmx-1", "ecr", "kpc");
//! config.cdtp_timeout = Duration::from_secs(3);
//! config.endpoint_ttl = Duration::from_secs(3600);
//! let mut cmx = Cmx::new(config)?;
//!
//! // 2. Subscriptions: subject filter and queue group for each input.
//! let subscriptions: Vec<(String, Option<String>)> = cmx
//!     .subscriptions()
//!     .all()
//!     .into_iter()
//!     .map(|(filter, queue)| (filter.to_string(), queue.map(str::to_owned)))
//!     .collect();
//! assert!(subscriptions.contains(&("kaa.v1.service.cmx.esp.ClientData".into(), Some("cmx".into()))));
//!
//! // 3. The loop. A message arrives from the bus: here, a device's configuration
//! //    request as a communication service forwards it (Avro, 4/ESP ClientData).
//! let now = UnixMillis(1_700_000_000_000);
//! let request = kaa_esp::ClientData {
//!     correlation_id: "07d78e95".into(),
//!     timestamp: now.0,
//!     app_version_name: "smart-kettle-v3".into(),
//!     endpoint_id: Some("7ad263ec-3347-4c7d-af89-50c67061367a".into()),
//!     resource_path: "/config/json".into(),
//!     request_id: Some(42),
//!     payload: Cow::Borrowed(br#"{"observe":true}"#),
//!     ..Default::default()
//! };
//! let reply_to = Some("kaa.v1.replica.kpc-1.esp.ExtensionData");
//! // Decode by subject and handle (or decode yourself and call `handle_client_data`).
//! cmx.handle_message("kaa.v1.service.cmx.esp.ClientData", reply_to, &request.to_vec(), now)?;
//!
//! // Drain every output and publish it: subject, replyTo, Avro datum.
//! let mut published = Vec::new();
//! while let Some(output) = cmx.poll_output() {
//!     published.push((output.subject().to_owned(), output.reply_to().map(str::to_owned), output.to_datum()));
//! }
//! // The engine asked the provider over 6/CDTP, with a deadline.
//! assert_eq!(published[0].0, "kaa.v1.service.ecr.cdtp.request");
//! assert_eq!(published[0].1.as_deref(), Some("kaa.v1.replica.cmx-1.cdtp.response"));
//!
//! // 4. Timers: sleep until `poll_timeout`, then `handle_timeout`. Here the
//! //    provider never answers, so the device gets a 504.
//! let deadline = cmx.poll_timeout().expect("a CDTP deadline");
//! cmx.handle_timeout(deadline);
//! match cmx.poll_output() {
//!     Some(Output::ExtensionData(answer)) => {
//!         assert_eq!(answer.subject.as_ref(), "kaa.v1.replica.kpc-1.esp.ExtensionData");
//!         assert_eq!((answer.request_id, answer.status_code), (Some(42), 504));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With an async bus the loop is a `select!` over the next message and the
//! engine's deadline; everything else stays the same:
//!
//! ```text
//! for (filter, queue) in cmx.subscriptions().all() { subscribe(filter, queue) }
//! loop {
//!     select! {
//!         msg = messages.next() => cmx.handle_message(&msg.subject, msg.reply_to.as_deref(), &msg.payload, clock())?,
//!         _ = sleep_until(cmx.poll_timeout()) => cmx.handle_timeout(clock()),
//!     }
//!     while let Some(out) = cmx.poll_output() {
//!         bus.publish_message(out.subject(), out.reply_to(), out.to_datum().into()).await?;
//!     }
//! }
//! ```
//!
//! An error from `handle_message` is a message that could not be decoded: log it
//! and go on. Nothing the engine receives makes it panic.
//!
//! ## Inputs
//!
//! | message | subject | method |
//! |---|---|---|
//! | 4/ESP `ClientData` | `kaa.v1.service.<cmx>.esp.ClientData` (queue group `<cmx>`), `kaa.v1.replica.<replica>.esp.ClientData` | [`Cmx::handle_client_data`] (with the NATS `replyTo`) |
//! | 6/CDTP `ConfigResponse` | `kaa.v1.replica.<replica>.cdtp.response` | [`Cmx::handle_config_response`] |
//! | 6/CDTP `ConfigUpdated` | `kaa.v1.events.<provider>.endpoint.config.updated` | [`Cmx::handle_config_updated`] |
//! | 9/ELCE connectivity | `kaa.v1.events.*.endpoint.connectivity.*` | [`Cmx::handle_connected`], [`Cmx::handle_disconnected`] |
//! | 9/ELCE lifecycle | `kaa.v1.events.*.endpoint.lifecycle.*` | [`Cmx::handle_app_version_updated`], [`Cmx::handle_unregistered`] |
//! | a deadline | [`Cmx::poll_timeout`] | [`Cmx::handle_timeout`] |
//!
//! [`Cmx::handle_message`] does the decoding and dispatch for all of them.
//!
//! ## Outputs
//!
//! [`Output`]: `ExtensionData` for devices (responses and pushes, on the
//! communication service replica of the request's session, or its instance-wide
//! subject), `ConfigRequest` for the provider (with its `replyTo`), and
//! `ConfigApplied` broadcasts. [`Output::to_datum`] encodes one; `message()` on
//! each variant lends the wire struct to encode yourself.
//!
//! ## Configuration
//!
//! [`CmxConfig`]: names (instance, replica, provider, communication service),
//! the CDTP timeout, the endpoint TTL, and the limits that bound memory
//! (tracked endpoints, CDTP requests in flight, names per endpoint, waiting
//! requests). The [`engine`] module documents the behaviour rule by rule:
//! observe, pushes, ordering, applied reports, errors, memory.
//!
//! ## Performance
//!
//! `benches/engine.rs` and `benches/memory.rs` measure the engine on one core
//! (a request answered from an in-memory provider, a push fan-out to 100,000
//! observing endpoints) and its memory per idle endpoint at 1,000,000 endpoints.
//! Measured with `cargo bench -p kaa-cmp -- --warm-up-time 1 --measurement-time 3`
//! on a shared 2-core machine (another benchmark running): about 1.8 million
//! engine steps per second for requests, 2.1 million per second in the fan-out
//! (100,000 pushes in 96 ms, each with its CDTP round trip); 209 bytes of heap
//! per idle endpoint with 36-byte endpoint IDs sharing a configuration, 375 bytes
//! when every endpoint has its own config ID.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod device;
pub mod engine;
mod intern;
pub mod message;
pub mod resource;

pub use engine::{Cmx, CmxConfig, Output};
