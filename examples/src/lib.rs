//! The example binaries' library: what composes the service crates into the
//! binaries in `src/bin` (`cmx`, `ecr`, `kpc`, `kaa-stack`, `device`,
//! `custom_cmx`), and the tests of the whole system.
//!
//! - [`stack`]: ECR, CMX and KPC in one process on one in-memory bus (the
//!   `kaa-stack` binary).
//! - [`device`]: the device simulator and load generator behind the `device` binary
//!   (7/CMP over 1/KP MQTT, on `kaa_cmp::device::Device`).
//! - Re-exported service crates, so that the binaries and tests name one crate:
//!   [`cmx`] ([`kaa_cmx`]: the `kaa-cmp` engine on a message bus, `/health`,
//!   `/metrics`, graceful shutdown), [`ecr`] ([`kaa_ecr`]: REST API, durable
//!   store, 6/CDTP provider), [`epr`] ([`kaa_epr`]: the endpoint register:
//!   provisioning REST API, hashed endpoint tokens, 16/ECAP provider), [`kpc`] ([`kaa_kpc`]: the MQTT communication
//!   service, an MQTT 3.1.1 server that routes 1/KP requests to extensions over
//!   4/ESP) and [`service`] ([`kaa_service`]: the toolkit they share).
//!
//! Your own service depends on the service crates directly; for example an ECR on
//! the embedded store, driven in-process:
//!
//! ```
//! use std::sync::Arc;
//! use kaa_ecr::core::{AppVersions, Ecr};
//! use kaa_ecr::model::{AppVersionName, ConfigName, Scope, now};
//! use kaa_ecr::store::{self, Precondition};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let dir = tempfile::tempdir()?;
//! let store = store::open(&format!("sqlite://{}", dir.path().join("ecr.db").display())).await?;
//! let ecr = Ecr::new(store, AppVersions::open(), None);
//! let scope = Scope::Default { app_version: AppVersionName::new("smartKettleV1")? };
//! let put = ecr.put(&scope, &ConfigName::default_name(), &serde_json::json!({"on": true}), &Precondition::None, now()).await?;
//! assert!(put.changed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod device;
pub mod stack;

/// The CMX service library, [`kaa_cmx`].
pub use kaa_cmx as cmx;
/// The ECR service library, [`kaa_ecr`].
pub use kaa_ecr as ecr;
/// The endpoint register library, [`kaa_epr`].
pub use kaa_epr as epr;
/// The KPC service library, [`kaa_kpc`].
pub use kaa_kpc as kpc;
/// The service toolkit, [`kaa_service`].
pub use kaa_service as service;
