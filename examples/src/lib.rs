//! Example services built on the `kaa-*` protocol crates.
//!
//! The CMX, ECR and KPC services, the device simulator and the all-in-one binary
//! land here as their issues are done.
//!
//! - [`cmx`]: the Configuration Management Extension (the `kaa-cmp` engine on the
//!   message bus, `/health`, `/metrics`, graceful shutdown).
//! - [`device`]: the device simulator and load generator behind the `device` binary
//!   (7/CMP over 1/KP MQTT, on `kaa_cmp::device::Device`).
//! - [`ecr`]: the Endpoint Configuration Repository (REST API, durable store, 6/CDTP
//!   provider).
//! - [`kpc`]: the MQTT communication service (an MQTT 3.1.1 server, not a broker)
//!   that routes 1/KP requests to extensions over 4/ESP.
//! - [`service`]: the small toolkit every service binary shares (YAML configuration,
//!   tracing, `/health` and `/metrics`, shutdown signal).
//!
//! Every service is a library module that binaries and tests compose; for example an
//! ECR on the embedded store, driven in-process:
//!
//! ```
//! use std::sync::Arc;
//! use kaa_examples::ecr::core::{AppVersions, Ecr};
//! use kaa_examples::ecr::model::{AppVersionName, ConfigName, Scope, now};
//! use kaa_examples::ecr::store::{self, Precondition};
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

pub mod cmx;
pub mod device;
pub mod ecr;
pub mod kpc;
pub mod service;
pub mod stack;
