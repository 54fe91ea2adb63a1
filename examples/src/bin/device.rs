//! The `device` CLI: one simulated device talking 7/CMP over 1/KP MQTT, or a load
//! generator with many. Built on `kaa_cmp::device::Device`; see
//! `kaa_examples::device` for the output format.
//!
//! ```text
//! # one device: request the default configuration, observe it, ask what to do
//! device --mqtt 127.0.0.1:1884 --app-version smart-kettle-v3 run --token JTjdbENzHh
//! # one shot: request "network", reject it, exit
//! device --app-version smart-kettle-v3 run --token JTjdbENzHh --name network --once --reject "WPA2 is not supported"
//! # configuration deltas (kaa-rs extension), watching two parts only
//! device --app-version smart-kettle-v3 run --token JTjdbENzHh --apply --deltas --pointer /rate --pointer /network/ssid
//! # 1,000 devices dev-1 … dev-1000, 5 requests each, latency percentiles
//! device --app-version smart-kettle-v3 load --devices 1000 --tokens 'dev-{}' --requests 5
//! ```
//!
//! Exit status: 0 on success; 1 when the connection fails, a one-shot run times
//! out, or (one-shot) an answer is an error; 2 for invalid arguments.

use std::process::ExitCode;

use clap::Parser;
use kaa_examples::device::cli::{Cli, run};

#[tokio::main]
async fn main() -> ExitCode {
    kaa_examples::service::init_tracing("warn");
    run(Cli::parse()).await
}
