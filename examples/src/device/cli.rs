//! The `device` binary's command line (clap) and what each command runs: `run`
//! (one device, [`run_device`]) and `load` (many, [`run_load`]).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use rumqttc::QoS;

use super::{
    Connection, Decision, DeviceOptions, LoadOptions, RejectIf, RejectRules, run_device, run_load,
};

/// The `device` command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "device",
    version,
    about = "Simulated Kaa devices: 7/CMP configuration over 1/KP MQTT"
)]
pub struct Cli {
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
    /// Endpoint register (kaa-epr) to provision devices in, as http://host:port
    /// (with `run --provision` or `load --provision`).
    #[arg(long, global = true, value_name = "URL")]
    register: Option<String>,
    /// Name of the environment variable holding the register's API token.
    #[arg(long, global = true, value_name = "VAR")]
    register_token_env: Option<String>,
}

/// `--reject-rate` and `--reject-if`, shared by `run` and `load`.
#[derive(Debug, Args)]
struct RejectArgs {
    /// Reject this share (0 to 1) of configurations: a device rejects a
    /// configuration when the FNV-1a hash of its token and the config ID, as a
    /// fraction, is below the rate, so the same device always decides the same
    /// way for the same configuration (see `kaa_examples::device::reject`).
    #[arg(long, value_name = "RATE", default_value_t = 0.0, value_parser = super::reject::parse_rate)]
    reject_rate: f64,
    /// Reject configurations where this RFC 6901 JSON Pointer exists, or with
    /// `=<JSON value>` where it has that value (e.g. `/debug`,
    /// `/wifi/security="WPA2"`); repeat for several (any one rejects).
    #[arg(long = "reject-if", value_name = "POINTER[=JSON]")]
    reject_if: Vec<RejectIf>,
}

impl RejectArgs {
    fn rules(self, status_code: i32) -> RejectRules {
        RejectRules {
            rate: self.reject_rate,
            conditions: self.reject_if,
            status_code,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One device: request configurations, print responses and pushes, report
    /// applied or rejected.
    ///
    /// --reject-rate and --reject-if decide first (the rule is the reason);
    /// then --apply, --reject or the question.
    Run(RunArgs),
    /// Many devices: connect them all, then time request → response.
    ///
    /// With --reject-rate or --reject-if each device also reports every
    /// configuration it receives: rejected by those rules (status 400, the
    /// rule as the reason) or applied.
    Load(LoadArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("identity").required(true).args(["token", "provision"])))]
struct RunArgs {
    /// Endpoint token.
    #[arg(long)]
    token: Option<String>,
    /// Register this endpoint ID in the register (--register) with a new token,
    /// and connect with that token.
    #[arg(long, value_name = "ENDPOINT_ID")]
    provision: Option<String>,
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
    // Rejections by rule (status --reject-status, the rule as the reason);
    // other configurations go through --apply, --reject or the question.
    #[command(flatten)]
    rejects: RejectArgs,
    /// Exit once every requested configuration has its answer (and report).
    #[arg(long)]
    once: bool,
    /// With --once: give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Ask for configuration deltas (kaa-rs extension): request on
    /// `…/config/json-patch[/<name>]`, apply the RFC 6902 patches received and
    /// check each result against its config ID; a patch that cannot be used is
    /// printed as `delta refused` and the configuration asked for again. A
    /// server without the extension (4xx) is then spoken to in plain 7/CMP.
    #[arg(long)]
    deltas: bool,
    /// With --deltas: watch only this part of the configuration, an RFC 6901
    /// JSON Pointer such as `/network/ssid` (repeat for several; applies to
    /// every --name). Configurations are then printed as views,
    /// `{"<pointer>": <part>, …}`, and pushed only when a watched part changes.
    #[arg(long = "pointer", value_name = "JSON_POINTER", requires = "deltas", value_parser = parse_pointer)]
    pointers: Vec<kaa_cmp::delta::PointerBuf>,
}

fn parse_pointer(s: &str) -> Result<kaa_cmp::delta::PointerBuf, String> {
    kaa_cmp::delta::parse_pointer(s)
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
    /// A file of endpoint tokens, one per line: device `i` uses line `i`
    /// (instead of the token pattern; keeps tokens off the command line).
    #[arg(long, value_name = "PATH", conflicts_with = "provision")]
    tokens_file: Option<std::path::PathBuf>,
    /// Register the devices in the register (--register) first, in batches of
    /// up to 10,000: the token pattern makes their endpoint IDs, each gets a new
    /// token.
    #[arg(long)]
    provision: bool,
    // With --reject-rate or --reject-if, every device reports each
    // configuration it receives: rejected (status 400, the rule as the
    // reason) or applied. Without them, no reports.
    #[command(flatten)]
    rejects: RejectArgs,
}

/// The register client the global options describe.
fn register(global: &Global) -> Result<super::provision::Register, String> {
    let Some(url) = &global.register else {
        return Err("--provision needs --register URL (the endpoint register)".into());
    };
    let bearer = match &global.register_token_env {
        Some(var) => Some(
            std::env::var(var)
                .map_err(|_| format!("--register-token-env {var}: the variable is not set"))?,
        ),
        None => None,
    };
    super::provision::Register::new(url, bearer).map_err(|e| e.to_string())
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

/// Runs the command `cli` names; the exit status the `device` binary returns.
pub async fn run(cli: Cli) -> ExitCode {
    let conn = match connection(&cli.global) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("device: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Run(args) => {
            let token = match (&args.token, &args.provision) {
                (Some(token), _) => token.clone(),
                (None, Some(endpoint_id)) => {
                    let provisioned = match register(&cli.global) {
                        Ok(r) => r.provision(endpoint_id, &cli.global.app_version).await,
                        Err(e) => {
                            eprintln!("device: {e}");
                            return ExitCode::from(2);
                        }
                    };
                    match provisioned {
                        Ok(d) => {
                            println!(
                                "provisioned endpoint {} (token ID {})",
                                d.endpoint_id, d.token_id
                            );
                            d.token
                        }
                        Err(e) => {
                            eprintln!("device: {e}");
                            return ExitCode::from(1);
                        }
                    }
                }
                (None, None) => unreachable!("clap requires --token or --provision"),
            };
            let mut o = DeviceOptions::new(
                conn,
                cli.global.app_version.clone(),
                cli.global.extension.clone(),
                token,
            );
            if let Some(endpoint_id) = &args.provision {
                // Never a provisioned (secret) token in a client ID.
                o.client_id = format!("device-{endpoint_id}");
            }
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
            o.deltas = args.deltas;
            o.pointers = args.pointers;
            o.reject = args.rejects.rules(args.reject_status);
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
            o.reject = args.rejects.rules(400);
            if let Some(path) = &args.tokens_file {
                match std::fs::read_to_string(path) {
                    Ok(text) => {
                        o.tokens = text
                            .lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(str::to_owned)
                            .collect();
                        if o.tokens.len() < o.devices {
                            eprintln!(
                                "device: --tokens-file {}: {} tokens for {} devices",
                                path.display(),
                                o.tokens.len(),
                                o.devices
                            );
                            return ExitCode::from(2);
                        }
                    }
                    Err(e) => {
                        eprintln!("device: --tokens-file {}: {e}", path.display());
                        return ExitCode::from(2);
                    }
                }
            }
            if args.provision {
                let ids: Vec<String> = (1..=o.devices).map(|i| o.pattern_token(i)).collect();
                let provisioned = match register(&cli.global) {
                    Ok(r) => r.provision_batch(&ids, &o.app_version).await,
                    Err(e) => {
                        eprintln!("device: {e}");
                        return ExitCode::from(2);
                    }
                };
                match provisioned {
                    Ok(devices) => {
                        println!("provisioned {} endpoints", devices.len());
                        o.tokens = devices.into_iter().map(|d| d.token).collect();
                    }
                    Err(e) => {
                        eprintln!("device: {e}");
                        return ExitCode::from(1);
                    }
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<RunArgs, String> {
        let mut argv = vec!["device", "--app-version", "v", "run", "--token", "t"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Run(run) => Ok(run),
            Command::Load(_) => unreachable!(),
        }
    }

    /// `--deltas` and repeatable `--pointer`: pointers are checked as RFC 6901
    /// when parsed and need `--deltas`.
    #[test]
    fn deltas_and_pointers() {
        let plain = parse(&[]).unwrap();
        assert!(!plain.deltas && plain.pointers.is_empty());
        let run = parse(&["--deltas", "--pointer", "/rate", "--pointer", "/a~1b/0"]).unwrap();
        assert!(run.deltas);
        let pointers: Vec<&str> = run.pointers.iter().map(|p| p.as_str()).collect();
        assert_eq!(pointers, ["/rate", "/a~1b/0"]);
        let err = parse(&["--deltas", "--pointer", "rate"]).unwrap_err();
        assert!(err.contains("invalid JSON Pointer"), "{err}");
        let err = parse(&["--pointer", "/rate"]).unwrap_err();
        assert!(err.contains("--deltas"), "{err}");
    }

    /// `--reject-rate` and repeatable `--reject-if`, on `run` and `load`.
    #[test]
    fn reject_rules() {
        let plain = parse(&[]).unwrap().rejects.rules(400);
        assert!(!plain.is_active());
        let run = parse(&[
            "--apply",
            "--reject-rate",
            "0.1",
            "--reject-if",
            "/debug",
            "--reject-if",
            "/wifi/security=\"WPA2\"",
            "--reject-status",
            "422",
        ])
        .unwrap();
        let rules = run.rejects.rules(run.reject_status);
        assert_eq!((rules.rate, rules.status_code), (0.1, 422));
        assert_eq!(rules.conditions.len(), 2);
        let err = parse(&["--reject-rate", "2"]).unwrap_err();
        assert!(err.contains("from 0 to 1"), "{err}");
        let err = parse(&["--reject-if", "/ssid=home"]).unwrap_err();
        assert!(err.contains("not JSON"), "{err}");
        let argv = [
            "device",
            "--app-version",
            "v",
            "load",
            "--reject-rate",
            "0.5",
            "--reject-if",
            "/x",
        ];
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Load(load) => {
                let rules = load.rejects.rules(400);
                assert_eq!((rules.rate, rules.conditions.len()), (0.5, 1));
            }
            Command::Run(_) => unreachable!(),
        }
    }
}
