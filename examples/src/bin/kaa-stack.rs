//! `kaa-stack`: the whole system in one process on embedded defaults — ECR (REST API
//! and SQLite store), CMX, KPC (MQTT) and the endpoint register (REST API, SQLite
//! store, 16/ECAP token validation) on an in-memory bus. See
//! `kaa_examples::stack` for what it runs and its local-use defaults.
//!
//! ```text
//! kaa-stack [--http-listen 127.0.0.1:8080] [--mqtt-listen 127.0.0.1:1883]
//!           [--register-listen 127.0.0.1:8082] [--data-dir kaa-data]
//! ```
//!
//! Stops on SIGTERM or ctrl-c. A listen port already in use is a one-line error that
//! names the port and the option that changes it (exit status 1).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kaa_examples::service::{init_tracing, shutdown_signal};
use kaa_examples::stack::{CMX_INSTANCE, Stack, StackOptions};

#[derive(Debug, Parser)]
#[command(
    name = "kaa-stack",
    version,
    about = "ECR + CMX + KPC + endpoint register in one process: Kaa configuration management on embedded defaults"
)]
struct Cli {
    /// REST API address (ECR: /api/v1, /health, /metrics).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    /// MQTT address (KPC) devices connect to.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt_listen: SocketAddr,
    /// Endpoint register REST API address (/api/v1/endpoints, /api/v1/tokens).
    #[arg(long, default_value = "127.0.0.1:8082")]
    register_listen: SocketAddr,
    /// Directory of the embedded stores (created if missing).
    #[arg(long, default_value = "kaa-data")]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing("warn,kaa_examples=info,kaa_cmx=info,kaa_ecr=info,kaa_kpc=info,kaa_service=info");
    if let Err(e) = std::fs::create_dir_all(&cli.data_dir) {
        eprintln!(
            "kaa-stack: cannot create --data-dir {}: {e}",
            cli.data_dir.display()
        );
        return ExitCode::from(1);
    }
    let store = cli.data_dir.join("ecr.db");
    let options = StackOptions {
        http_listen: cli.http_listen,
        mqtt_listen: cli.mqtt_listen,
        store_url: format!("sqlite://{}", store.display()),
        register_listen: cli.register_listen,
        register_store_url: format!("sqlite://{}", cli.data_dir.join("epr.db").display()),
    };
    let stack = match Stack::start(&options).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kaa-stack: {e}");
            return ExitCode::from(1);
        }
    };
    print_banner(&stack, &cli.data_dir);
    shutdown_signal().await;
    eprintln!("kaa-stack: stopping");
    match stack.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kaa-stack: {e}");
            ExitCode::from(1)
        }
    }
}

fn print_banner(stack: &Stack, data_dir: &std::path::Path) {
    let http = stack.http_addr();
    let mqtt = stack.mqtt_addr();
    let register = stack.register_addr();
    let (host, port) = (mqtt.ip(), mqtt.port());
    println!(
        "kaa-stack is running (ctrl-c to stop)
  REST API (ECR)       http://{http}/api/v1   (no authentication: local use)
  rollout page (ECR)   http://{http}/ui/   (configurations, status counts, staged rollouts)
  endpoint register    http://{register}/api/v1   (no authentication: local use)
  MQTT (KPC)           {mqtt}   (no MQTT credentials; tokens checked with the register,
                       a token it does not know is its own endpoint ID: development mode)
  stores               {data_dir}

Try it — set the default configuration of app version `demo-v1`:
  curl -X PUT http://{http}/api/v1/app-versions/demo-v1 \\
       -H 'Content-Type: application/json' -d '{{\"sampling\": 200}}'

Watch it arrive on a device `dev-1` with the device simulator (it requests, observes,
prints every push, and asks whether to report each configuration applied):
  cargo run -p kaa-examples --bin device -- --mqtt {mqtt} --app-version demo-v1 run --token dev-1

Then PUT another configuration and watch the push. Any MQTT client works as a device;
KPC answers on the session that used the token, subscribed or not. A fire-and-forget
applied report with mosquitto_pub:
  mosquitto_pub -h {host} -p {port} -t 'kp1/demo-v1/{CMX_INSTANCE}/dev-1/applied/json' -m '{{\"configId\": \"<id>\"}}'
and see it in   curl 'http://{http}/api/v1/statuses?endpointId=dev-1'

Provision a device and its token with one call (the token is shown this once):
  curl -X POST http://{register}/api/v1/endpoints -H 'Content-Type: application/json' \\
       -d '{{\"endpointId\": \"kettle-1\", \"appVersionName\": \"demo-v1\", \"issueToken\": true}}'
and connect with it, or let the simulator provision its device itself:
  cargo run -p kaa-examples --bin device -- --mqtt {mqtt} --app-version demo-v1 \\
       --register http://{register} run --provision kettle-2
Revoke a token (the device is cut off at once): POST http://{register}/api/v1/tokens/<tokenId>/revoke",
        data_dir = data_dir.display(),
    );
}
