//! # kaa-conformance: check your own Kaa service against the protocols
//!
//! A conformance kit in the manner of h2spec or the Autobahn test suite: it plays
//! the services around the service under test over a real NATS server, in the
//! protocols' Avro, and checks what the service does, case by case. Each case has
//! an ID and cites the RFC section (or the kaa-rs document) it checks; cases that
//! check kaa-rs extensions beyond the RFCs are marked and can be skipped. The kit
//! never needs the service's source: only its instance name and the names it is
//! configured with.
//!
//! The modes, one module each:
//!
//! - **CMX under test** ([`cmx`], `kaa-conformance cmx`): the kit plays the
//!   communication service (KPC: 4/ESP `ClientData` out, `ExtensionData` in, 9/ELCE
//!   connectivity events) and the configuration provider (ECR: 6/CDTP answers and
//!   `ConfigUpdated`), and checks 7/CMP behaviour: requests, unchanged answers,
//!   absent configurations, errors and timeouts, observe and pushes, pushes on
//!   connect and offline catch-up (latest only), named configurations, applied and
//!   rejected reports, older writers of the 4/ESP schema.
//! - **CMX fuzzing** ([`fuzz`], `kaa-conformance cmx-fuzz`): long generated
//!   sequences against the CMX, the invariants a conformant CMX keeps checked after
//!   each, reproducible from a seed, a failing sequence shrunk to a short one;
//!   many sequences at once (lanes) for runs of millions of steps.
//! - **Configuration provider (ECR) under test** ([`ecr`], `kaa-conformance ecr`):
//!   the kit plays the provider's consumer (6/CDTP requests, `ConfigUpdated`
//!   listener) and an operator of its REST API, and checks 6/CDTP answers
//!   (current, unchanged, absent, named, unknown app version, undecodable requests,
//!   correlation IDs, `replyTo`), the announcement that follows each REST write (its
//!   content, that it is visible when announced, never an older one after a newer)
//!   and the REST conventions (ETag, If-Match and 412, `{"message"}` errors, 404).
//! - **Communication service (KPC) under test** ([`kpc`], `kaa-conformance kpc`):
//!   the kit plays MQTT devices (a minimal MQTT 3.1.1 client of its own) and the
//!   extension the KPC forwards to (4/ESP `ClientData` in, `ExtensionData` out),
//!   listens to the KPC's 9/ELCE connectivity events, and checks 1/KP behaviour:
//!   the `ClientData` a request becomes, request IDs, `/status` and `/error`
//!   responses, QoS 1 and QoS 2 (both handshakes, a retransmission forwarded
//!   once), pushes delivered without SUBSCRIBE, malformed topics, `connected` and
//!   `disconnected` events, a token used from a second session, and, for a KPC
//!   that requires MQTT credentials (`--username`, `--password-env`), that wrong
//!   ones are refused.
//!
//! The binary: `kaa-conformance cmx --nats nats://127.0.0.1:4222 --cmx cmx
//! --provider ecr --kpc kpc [--junit report.xml]`, `kaa-conformance ecr --nats
//! nats://127.0.0.1:4222 --provider ecr --http http://127.0.0.1:8080 [--cmx cmx]`
//! or `kaa-conformance kpc --nats nats://127.0.0.1:4222 --mqtt 127.0.0.1:1883
//! --kpc kpc --extension cmx-conformance [--tokens-file F] [--username U
//! --password-env VAR]` prints a table, writes
//! JUnit XML for CI, and exits 0 only when every required case passed.
//! `kaa-conformance list` lists every mode's cases.
//!
//! A run from Rust, here against a CMX that is not there (every case fails; with
//! a real CMX on the bus they pass):
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use kaa_conformance::cmx::{CmxTarget, SuiteOptions, run_cmx_suite};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let bus = Arc::new(kaa_bus::MemoryBus::new());
//! let options = SuiteOptions {
//!     only: vec!["CMP-REQ-1".into()],
//!     wait: Duration::from_millis(50),
//!     ..SuiteOptions::default()
//! };
//! let report = run_cmx_suite(bus, &CmxTarget::new("cmx"), &options, |_| {}).await?;
//! assert_eq!(report.failed(), 1, "nobody answered");
//! assert!(!report.conformant());
//! println!("{}", report.to_table());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
pub mod cmx;
pub mod ecr;
pub mod fuzz;
pub mod kpc;
mod mqtt;
pub mod report;

pub use cmx::SuiteOptions;
pub use report::{CaseInfo, CaseResult, Outcome, Report};
