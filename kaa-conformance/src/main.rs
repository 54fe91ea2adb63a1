//! `kaa-conformance`: runs the conformance cases against a service on NATS.
//!
//! ```text
//! kaa-conformance cmx --nats nats://127.0.0.1:4222 --cmx cmx --provider ecr --kpc kpc \
//!     [--junit report.xml] [--skip-extensions] [--only CMP-REQ] [--cdtp-timeout-ms 5000]
//! kaa-conformance cmx-fuzz --cmx cmx --provider ecr --kpc kpc --seed 1 --sequences 1000 --lanes 16
//! kaa-conformance ecr --nats nats://127.0.0.1:4222 --provider ecr --http http://127.0.0.1:8080 \
//!     [--token-env ECR_TOKEN] [--cmx cmx] [--app-version conformance-v1] [--junit report.xml]
//! kaa-conformance kpc --nats nats://127.0.0.1:4222 --mqtt 127.0.0.1:1883 --kpc kpc \
//!     --extension cmx-conformance [--tokens-file tokens.txt] [--junit report.xml] \
//!     [--username devices --password-env KPC_MQTT_PASSWORD]
//! kaa-conformance list
//! ```
//!
//! Exit status: 0 when every required case passed, 1 when one failed, 2 on a usage
//! error or when the bus could not be reached.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kaa_conformance::cmx::{CASES, CmxTarget, SuiteOptions, run_cmx_suite};
use kaa_conformance::ecr::{EcrTarget, run_ecr_suite};
use kaa_conformance::fuzz::{FuzzOptions, FuzzOutcome, run_cmx_fuzz};
use kaa_conformance::kpc::{KpcTarget, run_kpc_suite};
use kaa_conformance::{CaseResult, Outcome};

#[derive(Parser, Debug)]
#[command(
    name = "kaa-conformance",
    version,
    about = "Checks a Kaa service against the protocols over NATS"
)]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// Check a CMX: the kit plays its communication service and its
    /// configuration provider.
    Cmx(CmxArgs),
    /// Fuzz a CMX: generated sequences, invariants checked after each, a failure
    /// shrunk to a short sequence (reproduce it with the same --seed).
    CmxFuzz(CmxFuzzArgs),
    /// Check a configuration provider (ECR): the kit plays its CMX over 6/CDTP
    /// and writes through its REST API.
    Ecr(EcrArgs),
    /// Check a communication service (KPC): the kit plays MQTT devices and the
    /// extension the KPC forwards to.
    Kpc(KpcArgs),
    /// List the cases of every mode with their IDs and what they cite.
    List,
}

#[derive(clap::Args, Debug)]
struct KpcArgs {
    /// NATS server URLs (comma-separated for a cluster).
    #[arg(long, default_value = "nats://127.0.0.1:4222", value_delimiter = ',')]
    nats: Vec<String>,
    /// The KPC's MQTT listener, host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// The KPC's service instance name.
    #[arg(long, default_value = "kpc")]
    kpc: String,
    /// An extension instance name the KPC forwards to and nothing else serves
    /// while the kit runs (the kit plays it).
    #[arg(long, default_value = "cmx-conformance")]
    extension: String,
    /// The app version in the kit's topics.
    #[arg(long, default_value = "conformance-v1")]
    app_version: String,
    /// A file of endpoint tokens valid for the app version, one per line, each a
    /// different endpoint; without it the KPC must accept any token.
    #[arg(long)]
    tokens_file: Option<std::path::PathBuf>,
    /// The username every CONNECT carries, for a KPC that requires credentials
    /// (KP-AUTH-1 then checks that it refuses wrong ones; without it KP-AUTH-1
    /// is skipped).
    #[arg(long)]
    username: Option<String>,
    /// The password every CONNECT carries (with --username). It stays in shell
    /// history and process lists: prefer --password-env.
    #[arg(long, requires = "username", conflicts_with = "password_env")]
    password: Option<String>,
    /// The environment variable holding the password (with --username).
    #[arg(long, requires = "username")]
    password_env: Option<String>,
    #[command(flatten)]
    run: RunArgs,
}

/// How a suite runs and reports.
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// How long to wait for an expected message, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    wait_ms: u64,
    /// How long to watch to be sure a message does not come, in milliseconds.
    #[arg(long, default_value_t = 500)]
    quiet_ms: u64,
    /// Skip the cases that check kaa-rs extensions.
    #[arg(long)]
    skip_extensions: bool,
    /// Run only the cases whose ID starts with this (repeatable).
    #[arg(long)]
    only: Vec<String>,
    /// Write JUnit XML here.
    #[arg(long)]
    junit: Option<std::path::PathBuf>,
}

impl RunArgs {
    fn options(&self) -> SuiteOptions {
        SuiteOptions {
            skip_extensions: self.skip_extensions,
            only: self.only.clone(),
            wait: Duration::from_millis(self.wait_ms),
            quiet: Duration::from_millis(self.quiet_ms),
        }
    }
}

#[derive(clap::Args, Debug)]
struct EcrArgs {
    /// NATS server URLs (comma-separated for a cluster).
    #[arg(long, default_value = "nats://127.0.0.1:4222", value_delimiter = ',')]
    nats: Vec<String>,
    /// The provider's service instance name.
    #[arg(long, default_value = "ecr")]
    provider: String,
    /// The base URL of the provider's REST API (the kit appends /api/v1).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    /// The environment variable holding a bearer token with read-write access
    /// (tokens never go on the command line).
    #[arg(long)]
    token_env: Option<String>,
    /// The CMX instance whose endpoint.config.applied events the provider
    /// records (the status-history case is skipped without it).
    #[arg(long)]
    cmx: Option<String>,
    /// The app version the kit writes endpoint configurations to; it must have
    /// no default configuration.
    #[arg(long, default_value = "conformance-v1")]
    app_version: String,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args, Debug)]
struct CmxFuzzArgs {
    #[command(flatten)]
    target: CmxTargetArgs,
    /// The seed: the same seed generates the same sequences.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How many cases to run (each up to `--lanes` sequences at the same time).
    #[arg(long, default_value_t = 100)]
    sequences: u32,
    /// The most sequences a case runs at the same time, each on endpoints of its
    /// own: the settle time is paid once per case (1: one sequence at a time).
    #[arg(long, default_value_t = 16)]
    lanes: usize,
    /// The longest sequence.
    #[arg(long, default_value_t = 30)]
    max_actions: usize,
    /// Endpoints per sequence.
    #[arg(long, default_value_t = 3)]
    endpoints: u8,
    /// How long the CMX must be silent before a sequence is checked, in ms.
    #[arg(long, default_value_t = 300)]
    settle_ms: u64,
    /// How much longer than the CDTP timeout an answer may take, in ms (room
    /// for a loaded machine).
    #[arg(long, default_value_t = 5000)]
    grace_ms: u64,
    /// Skip the invariants that check kaa-rs extensions.
    #[arg(long)]
    skip_extensions: bool,
}

#[derive(clap::Args, Debug)]
struct CmxTargetArgs {
    /// NATS server URLs (comma-separated for a cluster).
    #[arg(long, default_value = "nats://127.0.0.1:4222", value_delimiter = ',')]
    nats: Vec<String>,
    /// The CMX's service instance name.
    #[arg(long, default_value = "cmx")]
    cmx: String,
    /// The provider instance name the CMX is configured with (the kit plays it).
    #[arg(long, default_value = "ecr")]
    provider: String,
    /// The communication service instance name the CMX is configured with (the
    /// kit plays it).
    #[arg(long, default_value = "kpc")]
    kpc: String,
    /// The app version of the kit's endpoints (a CMX that only knows some app
    /// versions must accept this one).
    #[arg(long, default_value = "conformance-v1")]
    app_version: String,
    /// The CMX's 6/CDTP timeout in milliseconds.
    #[arg(long, default_value_t = 5000)]
    cdtp_timeout_ms: u64,
}

#[derive(clap::Args, Debug)]
struct CmxArgs {
    #[command(flatten)]
    target: CmxTargetArgs,
    #[command(flatten)]
    run: RunArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.what {
        What::List => {
            for (mode, cases) in [
                ("cmx", CASES),
                ("ecr", kaa_conformance::ecr::CASES),
                ("kpc", kaa_conformance::kpc::CASES),
            ] {
                println!("{mode}:");
                for c in cases {
                    let kind = if c.extension { "extension" } else { "required" };
                    println!("  {:<15} {:<10} {} [{}]", c.id, kind, c.title, c.cites);
                }
            }
            ExitCode::SUCCESS
        }
        What::Cmx(args) => run_cmx(args).await,
        What::CmxFuzz(args) => run_fuzz(args).await,
        What::Ecr(args) => run_ecr(args).await,
        What::Kpc(args) => run_kpc(args).await,
    }
}

async fn connect(nats: &[String]) -> Result<Arc<kaa_bus::NatsBus>, ExitCode> {
    let config = kaa_bus::NatsConfig::new(nats.to_vec())
        .with_retry_on_initial_connect(false)
        .with_connection_name("kaa-conformance");
    kaa_bus::NatsBus::connect(&config)
        .await
        .map(Arc::new)
        .map_err(|e| {
            eprintln!(
                "kaa-conformance: cannot reach NATS at {}: {e}",
                nats.join(",")
            );
            ExitCode::from(2)
        })
}

fn target_of(args: &CmxTargetArgs) -> CmxTarget {
    CmxTarget {
        cmx_instance: args.cmx.clone(),
        provider: args.provider.clone(),
        communication_service: args.kpc.clone(),
        kpc_replica: format!("kaa-conformance-{}", std::process::id()),
        app_version: args.app_version.clone(),
        cdtp_timeout: Duration::from_millis(args.cdtp_timeout_ms),
    }
}

async fn run_fuzz(args: CmxFuzzArgs) -> ExitCode {
    let bus = match connect(&args.target.nats).await {
        Ok(bus) => bus,
        Err(code) => return code,
    };
    let target = target_of(&args.target);
    let options = FuzzOptions {
        seed: args.seed,
        sequences: args.sequences,
        max_actions: args.max_actions,
        endpoints: args.endpoints,
        lanes: args.lanes.max(1),
        skip_extensions: args.skip_extensions,
        settle: Duration::from_millis(args.settle_ms),
        grace: Duration::from_millis(args.grace_ms),
        ..FuzzOptions::default()
    };
    eprintln!(
        "kaa-conformance cmx-fuzz: CMX {}, seed {}, {} cases of up to {} sequences of up to {} actions",
        target.cmx_instance, options.seed, options.sequences, options.lanes, options.max_actions
    );
    let bar = indicatif::ProgressBar::new(u64::from(options.sequences));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} case runs, {msg} steps {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let steps = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let handle = tokio::runtime::Handle::current();
    let progress_bar = bar.clone();
    let seed = options.seed;
    let outcome = tokio::task::spawn_blocking(move || {
        run_cmx_fuzz(handle, bus, &target, &options, |n| {
            let total = steps.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
            progress_bar.set_message(total.to_string());
            progress_bar.inc(1);
        })
    })
    .await;
    bar.finish_and_clear();
    match outcome {
        Ok(Ok(FuzzOutcome::Passed { sequences, steps })) => {
            println!(
                "cmx-fuzz: {sequences} cases, {steps} steps, every invariant kept (seed {seed})"
            );
            ExitCode::SUCCESS
        }
        Ok(Ok(FuzzOutcome::Failed {
            reason,
            sequence,
            beside,
        })) => {
            println!("cmx-fuzz: FAILED (seed {seed}): {reason}");
            println!("shortest failing sequence ({} actions):", sequence.len());
            for a in &sequence {
                println!("  {a:?}");
            }
            for (i, lane) in beside.iter().enumerate() {
                println!("run beside it, lane {i} ({} actions):", lane.len());
                for a in lane {
                    println!("  {a:?}");
                }
            }
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("kaa-conformance: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("kaa-conformance: the fuzzer stopped: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run_ecr(args: EcrArgs) -> ExitCode {
    let token = match &args.token_env {
        Some(var) => match std::env::var(var) {
            Ok(token) => Some(token),
            Err(_) => {
                eprintln!(
                    "kaa-conformance: the environment variable {var} (--token-env) is not set"
                );
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let bus = match connect(&args.nats).await {
        Ok(bus) => bus,
        Err(code) => return code,
    };
    let target = EcrTarget {
        provider: args.provider,
        http: args.http,
        token,
        cmx: args.cmx,
        app_version: args.app_version,
        consumer_replica: format!("kaa-conformance-{}", std::process::id()),
    };
    let options = args.run.options();
    let cases = kaa_conformance::ecr::CASES.len();
    run_suite(cases, args.run.junit.as_deref(), |progress| async move {
        run_ecr_suite(bus, &target, &options, progress).await
    })
    .await
}

async fn run_kpc(args: KpcArgs) -> ExitCode {
    let password = match (&args.password, &args.password_env) {
        (Some(password), _) => Some(password.clone()),
        (None, Some(var)) => match std::env::var(var) {
            Ok(password) => Some(password),
            Err(_) => {
                eprintln!(
                    "kaa-conformance: the environment variable {var} (--password-env) is not set"
                );
                return ExitCode::from(2);
            }
        },
        (None, None) => None,
    };
    let tokens = match &args.tokens_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            Err(e) => {
                eprintln!("kaa-conformance: cannot read {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => Vec::new(),
    };
    let bus = match connect(&args.nats).await {
        Ok(bus) => bus,
        Err(code) => return code,
    };
    let target = KpcTarget {
        kpc_instance: args.kpc,
        mqtt: args.mqtt,
        extension: args.extension,
        app_version: args.app_version,
        tokens,
        username: args.username,
        password,
    };
    let options = args.run.options();
    let cases = kaa_conformance::kpc::CASES.len();
    run_suite(cases, args.run.junit.as_deref(), |progress| async move {
        run_kpc_suite(bus, &target, &options, progress).await
    })
    .await
}

/// Runs a suite with a progress bar, prints the table, writes JUnit XML when
/// asked; the exit status says whether the service is conformant.
async fn run_suite<F, Fut>(cases: usize, junit: Option<&std::path::Path>, run: F) -> ExitCode
where
    F: FnOnce(Box<dyn FnMut(&CaseResult) + Send>) -> Fut,
    Fut: std::future::Future<Output = Result<kaa_conformance::Report, kaa_bus::BusError>>,
{
    let bar = indicatif::ProgressBar::new(cases as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress_bar = bar.clone();
    let progress = move |r: &CaseResult| {
        let mark = match r.outcome {
            Outcome::Passed => "pass",
            Outcome::Failed(_) => "FAIL",
            Outcome::Skipped(_) => "skip",
        };
        progress_bar.set_message(format!("{} {mark}", r.case.id));
        progress_bar.inc(1);
    };
    let report = match run(Box::new(progress)).await {
        Ok(report) => report,
        Err(e) => {
            bar.abandon();
            eprintln!("kaa-conformance: {e}");
            return ExitCode::from(2);
        }
    };
    bar.finish_and_clear();
    print!("{}", report.to_table());
    if let Some(path) = junit
        && let Err(e) = std::fs::write(path, report.to_junit())
    {
        eprintln!("kaa-conformance: cannot write {}: {e}", path.display());
        return ExitCode::from(2);
    }
    if report.conformant() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run_cmx(args: CmxArgs) -> ExitCode {
    let bus = match connect(&args.target.nats).await {
        Ok(bus) => bus,
        Err(code) => return code,
    };
    let target = target_of(&args.target);
    let options = args.run.options();
    run_suite(
        CASES.len(),
        args.run.junit.as_deref(),
        |progress| async move { run_cmx_suite(bus, &target, &options, progress).await },
    )
    .await
}
