//! The helpers the kaa-rs example tests and benches share (`publish = false`): one
//! set, in a library, so that every test binary uses what it needs and nothing is
//! copied.
//!
//! - [`service_binary`]: the path of the `cmx`, `ecr` or `kpc` binary, built by
//!   cargo on first use (they live in packages of their own, `examples/cmx`, …, so
//!   that each binary's dependency tree is its service library's).
//! - [`cmx`]: a fake 6/CDTP provider and a fake communication service on any bus,
//!   unique names per test, a CMX service started from YAML.
//! - [`ecr`]: store URLs for both backends (SQLite, PostgreSQL under the skip rule)
//!   and [`both_stores!`](crate::both_stores).
//! - [`kpc`]: a KPC on an ephemeral port, a fake CMX, MQTT clients.
//! - [`e2e`]: real MQTT devices and the REST API against a running system (embedded
//!   or three processes over NATS), with the behaviours both deployments share.
//! - [`fault`]: the fault-injection harness (private PostgreSQL and NATS, restartable
//!   service processes, a fleet of reconnecting devices).
//! - [`fleet`]: REST calls, the in-process stack and a fleet of simulated devices
//!   for the rollout and layer tests at fleet scale.
//! - [`bench`](mod@bench): settings from the environment and percentiles for the load benches.
//! - [`mini_mqtt`], [`mqtt_device`], [`log_capture`]: a minimal MQTT packet writer
//!   and reader, a rumqttc device connection, an in-memory `tracing` writer.
//!
//! ```no_run
//! let cmx = kaa_testkit::service_binary("cmx");
//! let status = std::process::Command::new(cmx).arg("--help").status()?;
//! assert!(status.success());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

pub mod bench;
pub mod cmx;
pub mod e2e;
pub mod ecr;
pub mod fault;
pub mod fleet;
pub mod kpc;
pub mod log_capture;
pub mod mini_mqtt;
pub mod mqtt_device;

/// The path of the example service binary `name` (`cmx`, `ecr` or `kpc`, from the
/// package `kaa-example-<name>`), built with the profile of the calling test on
/// first use in this process (a no-op when it is fresh).
///
/// The binaries are not in this package, so cargo's `CARGO_BIN_EXE_<name>` does not
/// name them; this asks cargo (the one running the tests, `$CARGO`) to build the
/// binary and reports where it is, as `cargo run` would. Calls are serialised and
/// each binary is built once per process.
///
/// # Panics
///
/// When cargo cannot build the binary (the test cannot run without it).
pub fn service_binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let run = escargot::CargoBuild::new()
        .manifest_path(workspace)
        .package(format!("kaa-example-{name}"))
        .bin(name)
        .current_release()
        .run()
        .unwrap_or_else(|e| panic!("cargo could not build the `{name}` binary: {e}"));
    let path = run.path().to_path_buf();
    built.insert(name.to_owned(), path.clone());
    path
}
