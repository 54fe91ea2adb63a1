//! The KPC service binary: `kpc <config.yaml>` (or `kpc --config <config.yaml>`).
//!
//! Reads the YAML configuration (see `kaa_kpc::config`), builds the bus
//! (NATS when `nats.urls` is set, else in-memory), listens for MQTT on
//! `kpc.mqtt.listen` (and serves `/health` and `/metrics` on `kpc.http.listen` when
//! set), and stops gracefully on SIGTERM or ctrl-c: every session ends and its
//! `disconnected` event is published. On start it prints
//! `kpc listening on mqtt://<addr>` to stdout. An invalid configuration is reported
//! on stderr with exit status 2; a start-up failure (bus, listener) with exit
//! status 1.

use std::process::ExitCode;

use clap::Parser;

use kaa_kpc::{KpcServer, StartError, config::KpcConfig, connect_bus};
use kaa_service::{ServiceArgs, init_tracing, load_yaml, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing("info");
    let args = ServiceArgs::parse();
    let path = args.config_path();
    let config: KpcConfig = match load_yaml(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kpc: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("kpc: {}: {e}", path.display());
        return ExitCode::from(2);
    }
    tracing::info!(
        instance = %config.instance_name(),
        replica = %config.replica_id(),
        tokens = config.kpc.endpoint_tokens.len(),
        "starting KPC"
    );
    let bus = match connect_bus(&config).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("kpc: {e}");
            return ExitCode::from(1);
        }
    };
    let server = match KpcServer::bind(&config, bus).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kpc: {e}");
            return ExitCode::from(if matches!(e, StartError::Config(_)) {
                2
            } else {
                1
            });
        }
    };
    println!("kpc listening on mqtt://{}", server.local_addr());
    if let Some(ops) = server.ops_addr() {
        println!("kpc metrics on http://{ops}/metrics");
    }
    match server.run(shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kpc: {e}");
            ExitCode::from(1)
        }
    }
}
