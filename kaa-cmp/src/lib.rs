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
//!   firmware and simulators;
//! - [`canonical`]: the canonical JSON form and the config ID derived from it
//!   (SHA-256), as kaa-rs defines config IDs, so that a device can verify a
//!   configuration it patched;
//! - [`delta`]: configuration deltas (RFC 6902 JSON Patch) and partial
//!   subscription (RFC 6901 JSON Pointers) on `/config/json-patch[/<name>]`, a
//!   kaa-rs extension a device opts into; plain 7/CMP is unchanged;
//! - [`interop`]: what Kaa's own device clients (the official Python client and
//!   Kaa's device examples) send and expect, and which of it is accepted.
//!
//! # Building a custom CMX
//!
//! A CMX is [`Cmx`] plus a message bus (e.g. `kaa-bus`, NATS or in memory) and a
//! clock. The engine never blocks and never reads the time: the driver decodes
//! each message into an [`Input`] ([`Cmx::decode_input`] applies every limit of
//! the configuration), hands it over with the current time
//! ([`Cmx::handle_input`]), publishes what the engine asks for, and wakes it up
//! at the deadline it names. The [`engine`] module's contract lists the calls
//! and their order; its table lists every input.
//!
//! ```
//! use std::borrow::Cow;
//! use std::time::Duration;
//!
//! use kaa_cmp::{Cmx, CmxConfig, Input, Output};
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
//! // 3. Once the subscriptions are in effect (and again after every reconnect of
//! //    the bus): the engine asks the communication service for its sessions, so
//! //    a restarted CMX learns the devices that are already connected.
//! let now = UnixMillis(1_700_000_000_000);
//! cmx.handle_input(Input::BusConnected, now);
//! let Some(Output::SessionsRequest(ask)) = cmx.poll_output() else { unreachable!() };
//! assert_eq!(&*ask.subject, "kaa.v1.service.kpc.elce.SessionsRequest");
//!
//! // 4. The loop. A message arrives from the bus: here, a device's configuration
//! //    request as a communication service forwards it (Avro, 4/ESP ClientData).
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
//! let (subject, reply_to, datum) = (
//!     "kaa.v1.service.cmx.esp.ClientData",
//!     Some("kaa.v1.replica.kpc-1.esp.ExtensionData"),
//!     request.to_vec(),
//! );
//! // Decode by subject (an error is a message to log and skip), then handle.
//! let input = cmx.decode_input(subject, reply_to, &datum)?;
//! cmx.handle_input(input, now);
//!
//! // Drain every output and publish it: subject, replyTo, Avro datum.
//! let mut published = Vec::new();
//! while let Some(output) = cmx.poll_output() {
//!     let mut datum = Vec::new();
//!     output.encode(&mut datum);
//!     published.push((output.subject().to_owned(), output.reply_to().map(str::to_owned), datum));
//! }
//! // The engine asked the provider over 6/CDTP, with a deadline.
//! assert_eq!(published[0].0, "kaa.v1.service.ecr.cdtp.request");
//! assert_eq!(published[0].1.as_deref(), Some("kaa.v1.replica.cmx-1.cdtp.response"));
//!
//! // 5. Timers: sleep until `poll_timeout`, then hand over `Input::Timeout`.
//! //    Here the provider never answers, so the device gets a 504.
//! let deadline = cmx.poll_timeout().expect("a CDTP deadline");
//! cmx.handle_input(Input::Timeout, deadline);
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
//! With an async bus the loop is a `select!` over the next message, the
//! engine's deadline and the bus's reconnects; everything else stays the same:
//!
//! ```text
//! for (filter, queue) in cmx.subscriptions().all() { subscribe(filter, queue) }
//! cmx.handle_input(Input::BusConnected, clock());
//! loop {
//!     let input = select! {
//!         msg = messages.next() => match cmx.decode_input(&msg.subject, msg.reply_to.as_deref(), &msg.payload) {
//!             Ok(input) => input,
//!             Err(e) => { log(e); continue }
//!         },
//!         _ = sleep_until(cmx.poll_timeout()) => Input::Timeout,
//!         _ = bus.reconnected() => Input::BusConnected,
//!     };
//!     cmx.handle_input(input, clock());
//!     while let Some(out) = cmx.poll_output() {
//!         bus.publish_message(out.subject(), out.reply_to(), out.to_datum().into()).await?;
//!     }
//!     while let Some(refusal) = cmx.poll_refusal() { log(refusal) }
//! }
//! ```
//!
//! Nothing the engine receives makes it panic. A device request the engine
//! refuses and cannot answer (it has no request ID) comes out of
//! [`Cmx::poll_refusal`]: log it, or the device's mistake goes unseen.
//!
//! ## Outputs
//!
//! [`Output`]: `ExtensionData` for devices (responses and pushes, on the
//! communication service replica of the request's session, or its instance-wide
//! subject), `ConfigRequest` for the provider (with its `replyTo`),
//! `ConfigApplied` broadcasts, and the sessions request (with its `replyTo`).
//! [`Output::encode`] writes one into the caller's buffer; `message()` on each
//! variant lends the wire struct to encode yourself.
//!
//! ## Replicas
//!
//! Several replicas of one CMX instance share the work by endpoint (kaa-rs
//! extension): the driver feeds the live members ([`Input::Members`]), each
//! endpoint is served by its rendezvous-hash owner, and `ClientData` reaching
//! another replica is handed over ([`Output::HandOver`]). See "Replicas" in the
//! [`engine`] docs.
//!
//! ## Configuration
//!
//! [`CmxConfig`]: names (instance, replica, provider, communication service),
//! the CDTP timeout, the endpoint TTL, and the limits that bound memory and
//! input (tracked endpoints, CDTP requests in flight, names per endpoint,
//! waiting requests, endpoints per 9/ELCE event). The [`engine`] module
//! documents the behaviour rule by rule: observe, pushes, ordering, recovery,
//! applied reports, errors, memory. Measured speed and memory per endpoint:
//! `benches/engine.rs` and `benches/memory.rs`, figures in the repository's
//! `BENCHMARKS.md`.
//!
//! ## Testing a CMX
//!
//! With the `test-support` cargo feature the crate also exports
//! `test_support`: a fake 6/CDTP provider that answers by kaa-cdtp's rules (and
//! can be told to answer errors, "no configuration" or late) and the engine's
//! invariants as checks (never an older configuration after a newer one, one
//! CDTP request in flight per endpoint and name, the shape of every response,
//! limits and timers), which this crate's tests and benchmarks and the
//! `cmx_sequence` fuzz target share.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod canonical;
pub mod delta;
pub mod device;
pub mod engine;
mod intern;
pub mod interop;
pub mod message;
pub mod resource;
#[cfg(feature = "test-support")]
pub mod test_support;

pub use engine::{Cmx, CmxConfig, Input, InputError, Output};
