//! The endpoint register binary: `epr <config.yaml>` (or `epr --config <config.yaml>`).
//!
//! Reads the YAML configuration (see `kaa_epr::config`), builds the bus (NATS when
//! `nats.urls` is set, else in-memory) and the store, serves the provisioning REST
//! API, `/health` and `/metrics` on `epr.http.listen`, answers 16/ECAP token
//! validation, and stops gracefully on SIGTERM or ctrl-c. On start it prints
//! `epr listening on http://<addr>` to stdout. An invalid configuration is reported
//! on stderr with exit status 2; a start-up failure (store, bus, listener) with 1.

use std::process::ExitCode;

use clap::Parser;

use kaa_epr::{EprServer, config::EprConfig, connect_bus};
use kaa_service::{ServiceArgs, init_tracing, load_yaml, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing("info");
    let args = ServiceArgs::parse();
    let path = args.config_path();
    let config: EprConfig = match load_yaml(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("epr: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("epr: {}: {e}", path.display());
        return ExitCode::from(2);
    }
    tracing::info!(
        instance = %config.service.instance.name,
        replica = %config.replica_id(),
        auth = config.auth.enabled,
        "starting the endpoint register"
    );
    let bus = match connect_bus(&config).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("epr: {e}");
            return ExitCode::from(1);
        }
    };
    let server = match EprServer::bind(&config, bus).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("epr: {e}");
            return ExitCode::from(if matches!(e, kaa_epr::StartError::Config(_)) {
                2
            } else {
                1
            });
        }
    };
    println!("epr listening on http://{}", server.local_addr());
    tracing::info!(addr = %server.local_addr(), "listening");
    match server.run(shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("epr: {e}");
            ExitCode::from(1)
        }
    }
}
