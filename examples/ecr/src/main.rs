//! The ECR service binary: `ecr <config.yaml>` (or `ecr --config <config.yaml>`).
//!
//! Reads the YAML configuration (see `kaa_ecr::config`), builds the bus
//! (NATS when `nats.urls` is set, else in-memory) and the store, serves the REST API,
//! `/health` and `/metrics` on `ecr.http.listen`, and stops gracefully on SIGTERM or
//! ctrl-c. On start it prints `ecr listening on http://<addr>` to stdout. An invalid
//! configuration is reported on stderr with exit status 2; a start-up failure (store,
//! bus, listener) with exit status 1.

use std::process::ExitCode;

use clap::Parser;

use kaa_ecr::{EcrServer, config::EcrConfig, connect_bus, store::redact_url};
use kaa_service::{ServiceArgs, init_tracing, load_yaml, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing("info");
    let args = ServiceArgs::parse();
    let path = args.config_path();
    let config: EcrConfig = match load_yaml(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ecr: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("ecr: {}: {e}", path.display());
        return ExitCode::from(2);
    }
    tracing::info!(
        instance = %config.service.instance.name,
        replica = %config.replica_id(),
        store = %config.ecr.store.url_env.as_ref().map_or_else(
            || redact_url(&config.ecr.store.url),
            |var| format!("(from ${var})")
        ),
        auth = config.auth.enabled,
        "starting ECR"
    );
    let bus = match connect_bus(&config).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("ecr: {e}");
            return ExitCode::from(1);
        }
    };
    let server = match EcrServer::bind(&config, bus).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ecr: {e}");
            return ExitCode::from(if matches!(e, kaa_ecr::StartError::Config(_)) {
                2
            } else {
                1
            });
        }
    };
    println!("ecr listening on http://{}", server.local_addr());
    tracing::info!(addr = %server.local_addr(), "listening");
    match server.run(shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ecr: {e}");
            ExitCode::from(1)
        }
    }
}
