//! The CMX service binary: `cmx <config.yaml>` (or `cmx --config <config.yaml>`).
//!
//! Reads the YAML configuration (see `kaa_cmx::config`), connects the bus
//! (NATS at `nats.urls` with credentials from the environment, or in memory), runs
//! the engine, serves `/health` and `/metrics` on `cmx.http.listen`, and on SIGTERM
//! or ctrl-c leaves the replicas (with `cmx.replicas.enabled`), stops taking
//! requests, waits for the answers in flight
//! (`cmx.shutdown-grace-ms`) and exits 0. On start it prints `cmx running` (and the
//! HTTP address) to stdout. An invalid configuration is reported on stderr with exit
//! status 2; any other start-up failure with exit status 1.

use std::process::ExitCode;

use clap::Parser;

use kaa_cmx::config::{BusKind, CmxServiceConfig};
use kaa_cmx::{CmxService, StartError, connect_bus, connect_membership};
use kaa_service::{ServiceArgs, init_tracing, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing("info");
    let args = ServiceArgs::parse();
    let path = args.config_path();
    let config = match CmxServiceConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cmx: {e}");
            return ExitCode::from(2);
        }
    };
    if config.bus_kind() == BusKind::Memory {
        tracing::warn!(
            "cmx.bus is memory: no other process can reach this CMX (use the all-in-one binary, or set nats.urls)"
        );
    }
    tracing::info!(
        instance = config.instance_name(),
        replica = %config.replica_id(),
        provider = config.provider(),
        communication_service = config.communication_service(),
        bus = ?config.bus_kind(),
        "starting CMX"
    );
    let (bus, probe) = match connect_bus(&config).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cmx: {e}");
            return ExitCode::from(1);
        }
    };
    let mut service = match CmxService::bind(&config, bus).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cmx: {e}");
            let code = if matches!(e, StartError::Config(_) | StartError::Engine(_)) {
                2
            } else {
                1
            };
            return ExitCode::from(code);
        }
    };
    if let Some(probe) = probe {
        service = service.with_bus_probe(probe);
    }
    // `cmx.replicas.enabled`: share the endpoints with the other replicas.
    match connect_membership(&config).await {
        Ok(Some(membership)) => service = service.with_membership(membership),
        Ok(None) => {}
        Err(e) => {
            eprintln!("cmx: {e}");
            return ExitCode::from(1);
        }
    }
    match service.local_addr() {
        Some(addr) => println!("cmx running; health and metrics on http://{addr}"),
        None => println!("cmx running"),
    }
    match service.run(shutdown_signal()).await {
        Ok(report) => {
            tracing::info!(?report, "stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cmx: {e}");
            ExitCode::from(1)
        }
    }
}
