//! The `device` CLI: one simulated device talking 7/CMP over 1/KP MQTT, or a load
//! generator with many. Built on `kaa_cmp::device::Device`; see
//! `kaa_examples::device` for the output format.
//!
//! ```text
//! # one device: request the default configuration, observe it, ask what to do
//! device --mqtt 127.0.0.1:1884 --app-version smart-kettle-v3 run --token JTjdbENzHh
//! # one shot: request "network", reject it, exit
//! device --app-version smart-kettle-v3 run --token JTjdbENzHh --name network --once --reject "WPA2 is not supported"
//! # 1,000 devices dev-1 … dev-1000, 5 requests each, latency percentiles
//! device --app-version smart-kettle-v3 load --devices 1000 --tokens 'dev-{}' --requests 5
//! ```
//!
//! Exit status: 0 on success; 1 when the connection fails, a one-shot run times
//! out, or (one-shot) an answer is an error; 2 for invalid arguments.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use kaa_examples::device::{
    Connection, Decision, DeviceOptions, LoadOptions, run_device, run_load,
};
use rumqttc::QoS;

#[derive(Debug, Parser)]
#[command(
    name = "device",
    version,
    about = "Simulated Kaa devices: 7/CMP configuration over 1/KP MQTT"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// MQTT server (KPC) as host:port.
    #[arg(long, default_value = "127.0.0.1:1883", global = true)]
    mqtt: String,
    /// MQTT username.
    #[arg(long, global = true)]
    username: Option<String>,
    /// Name of the environment variable holding the MQTT password.
    #[arg(long, global = true, value_name = "VAR")]
    password_env: Option<String>,
    /// Application version name.
    #[arg(long, global = true, default_value = "")]
    app_version: String,
    /// Extension instance name.
    #[arg(long, global = true, default_value = "cmx")]
    extension: String,
    /// QoS of every publish: 0 or 1.
    #[arg(long, global = true, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// MQTT keep-alive in seconds.
    #[arg(long, global = true, default_value_t = 30)]
    keep_alive: u64,
    /// SUBSCRIBE to the device's topics (for brokers; KPC does not need it).
    #[arg(long, global = true)]
    subscribe: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One device: request configurations, print responses and pushes, report
    /// applied or rejected.
    Run(RunArgs),
    /// Many devices: connect them all, then time request → response.
    Load(LoadArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Endpoint token.
    #[arg(long)]
    token: String,
    /// MQTT client ID (default `device-TOKEN`).
    #[arg(long)]
    client_id: Option<String>,
    /// A configuration name to request (repeat for several; none: the default).
    #[arg(long = "name")]
    names: Vec<String>,
    /// `observe` in the requests: true or false (omit to leave it out).
    #[arg(long, default_value = "true")]
    observe: Option<bool>,
    /// Leave `observe` out of the requests.
    #[arg(long, conflicts_with = "observe")]
    no_observe: bool,
    /// Report every configuration applied.
    #[arg(long, conflicts_with = "reject")]
    apply: bool,
    /// Report every configuration rejected, with this reason.
    #[arg(long, value_name = "REASON")]
    reject: Option<String>,
    /// Status code of rejections.
    #[arg(long, default_value_t = 400)]
    reject_status: i32,
    /// Exit once every requested configuration has its answer (and report).
    #[arg(long)]
    once: bool,
    /// With --once: give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// Number of devices (one MQTT connection each).
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Token pattern: `{}` becomes the device number 1..N.
    #[arg(long, default_value = "dev-{}")]
    tokens: String,
    /// Configuration requests per device.
    #[arg(long, default_value_t = 1)]
    requests: usize,
    /// Configuration name (default: the default configuration).
    #[arg(long)]
    name: Option<String>,
    /// Connections opened at the same time. KPC takes at most
    /// `kpc.mqtt.max-handshakes-per-address` (default 256) unfinished connections
    /// from one address: above that, raise it there.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds before a request counts as timed out.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn connection(global: &Global) -> Result<Connection, String> {
    let (host, port) = global
        .mqtt
        .rsplit_once(':')
        .ok_or_else(|| format!("--mqtt {:?}: expected host:port", global.mqtt))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("--mqtt {:?}: invalid port", global.mqtt))?;
    let mut c = Connection::new(host.trim_start_matches("mqtt://"), port);
    if let Some(user) = &global.username {
        let password = match &global.password_env {
            Some(var) => std::env::var(var)
                .map_err(|_| format!("--password-env {var}: the variable is not set"))?,
            None => String::new(),
        };
        c.credentials = Some((user.clone(), password));
    }
    c.keep_alive = Duration::from_secs(global.keep_alive.max(1));
    c.qos = if global.qos == 1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    c.subscribe = global.subscribe;
    if global.app_version.is_empty() {
        return Err("--app-version is required".into());
    }
    Ok(c)
}

#[tokio::main]
async fn main() -> ExitCode {
    kaa_examples::service::init_tracing("warn");
    let cli = Cli::parse();
    let conn = match connection(&cli.global) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("device: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Run(args) => {
            let mut o = DeviceOptions::new(
                conn,
                cli.global.app_version.clone(),
                cli.global.extension.clone(),
                args.token.clone(),
            );
            if let Some(id) = args.client_id {
                o.client_id = id;
            }
            if !args.names.is_empty() {
                o.names = args.names.into_iter().map(Some).collect();
            }
            o.observe = if args.no_observe { None } else { args.observe };
            o.decision = match (args.apply, args.reject) {
                (true, _) => Decision::Apply,
                (false, Some(reason)) => Decision::Reject {
                    status_code: args.reject_status,
                    reason,
                },
                (false, None) => Decision::Ask,
            };
            o.once = args.once;
            o.timeout = Duration::from_secs(args.timeout);
            let mut stdout = std::io::stdout();
            match run_device(&o, &mut stdout).await {
                Ok(summary) if o.once && summary.errors > 0 => ExitCode::from(1),
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("device: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Load(args) => {
            let mut o = LoadOptions::new(conn, cli.global.app_version.clone(), args.devices);
            o.extension = cli.global.extension.clone();
            o.token_pattern = args.tokens;
            o.requests = args.requests;
            o.name = args.name;
            o.concurrency = args.concurrency;
            o.timeout = Duration::from_secs(args.timeout);
            o.progress = !args.no_progress;
            let report = run_load(&o).await;
            let mut stdout = std::io::stdout();
            if report.print(&mut stdout).is_err() {
                return ExitCode::from(1);
            }
            if report.connect_failures > 0 || report.timeouts > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
