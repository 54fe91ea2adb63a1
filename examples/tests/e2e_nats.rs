//! End-to-end tests of the separate processes: the real `ecr`, `cmx` and `kpc`
//! binaries on the machine's NATS and a fresh PostgreSQL database, driven by real
//! MQTT devices and the REST API. The behaviours are the ones `e2e_embedded.rs`
//! runs on the in-memory stack (`e2e_common`).
//!
//! Each test starts its own three processes with instance names unique to the test
//! (so tests sharing the NATS server never answer each other), on ephemeral ports,
//! with its own database (dropped afterwards). Without NATS or PostgreSQL the test
//! prints `SKIPPED: …` and passes, unless `KAA_REQUIRE_SERVICES=1`.
//!
//! `official_python_client` needs the instance names `scripts/stack-nats.sh` uses
//! (`ecr`, `cmx`, `kpc`: Kaa's official client writes `cmx` into its topics), so it
//! runs on a private `nats-server` of its own, where those names meet nobody else.

mod e2e_common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use e2e_common::{System, unique};
use kaa_bus::test_support::{NATS, POSTGRES, PrivateNatsServer};

/// How long a binary may take to print its start banner.
const START: Duration = Duration::from_secs(30);

/// The three processes and the database of one test; killed and dropped on drop.
struct Processes {
    children: Vec<(&'static str, Child)>,
    admin_url: String,
    database: String,
    dir: tempfile::TempDir,
    /// The test's own NATS server, if it has one (stopped after the processes).
    _nats: Option<PrivateNatsServer>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("psql")
            .arg(&self.admin_url)
            .arg("-qc")
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.database
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if std::thread::panicking() {
            // Show the services' logs of a failed test.
            for (name, _) in &self.children {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- {name}.log (last lines, newest first) ---");
                for l in tail {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// Spawns `bin config`, logs (stderr) to `<dir>/<name>.log`, and waits for the
/// stdout line starting with `banner`; returns the child and that line.
fn spawn(bin: &str, name: &'static str, dir: &Path, config: &str, banner: &str) -> (Child, String) {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(config.as_bytes()))
        .expect("config written");
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    let mut child = Command::new(bin)
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let banner = banner.to_owned();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut sent = false;
        // Keep reading (and discarding) after the banner so the pipe never fills.
        for line in lines.by_ref().map_while(Result::ok) {
            if !sent && line.starts_with(&banner) {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    match rx.recv_timeout(START) {
        Ok(line) => (child, line),
        Err(_) => {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
            panic!("{name} did not start within {START:?}; log:\n{log}");
        }
    }
}

fn addr_after(line: &str, scheme: &str) -> std::net::SocketAddr {
    let rest = line
        .split(scheme)
        .nth(1)
        .unwrap_or_else(|| panic!("no {scheme} in {line:?}"));
    rest.trim_end_matches(|c: char| c == '/' || c.is_alphabetic())
        .parse()
        .unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// Starts ECR, CMX and KPC as separate processes on the machine's NATS, with
/// instance names unique to the test, or returns `None` (after a visible
/// `SKIPPED:` line) when NATS or PostgreSQL is down.
async fn start(test: &str) -> Option<(Processes, System)> {
    let nats = NATS.require(test)?;
    let tag = unique(test).replace('_', "-");
    let names = [
        format!("ecr-{tag}"),
        format!("cmx-{tag}"),
        format!("kpc-{tag}"),
    ];
    start_on(test, nats, names, None).await
}

/// Starts ECR, CMX and KPC named `ecr`, `cmx` and `kpc` (as
/// `scripts/stack-nats.sh` names them) on a private `nats-server`, or returns
/// `None` (after a visible `SKIPPED:` line) when it or PostgreSQL is unavailable.
async fn start_private(test: &str) -> Option<(Processes, System)> {
    let server = PrivateNatsServer::start(test)?;
    let names = ["ecr".to_owned(), "cmx".to_owned(), "kpc".to_owned()];
    start_on(test, server.url(), names, Some(server)).await
}

async fn start_on(
    test: &str,
    nats: String,
    [ecr, cmx, kpc]: [String; 3],
    private_nats: Option<PrivateNatsServer>,
) -> Option<(Processes, System)> {
    let admin_url = POSTGRES.require(test)?;
    let database = unique("e2e").replace('-', "_");
    let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL connection");
    let conn = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE \"{database}\""))
        .await
        .expect("CREATE DATABASE");
    drop(client);
    let _ = conn.await;
    let store_url = match admin_url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{database}"),
        None => panic!("PostgreSQL URL without a database: {admin_url}"),
    };

    let mut p = Processes {
        children: Vec::new(),
        admin_url,
        database,
        dir: tempfile::tempdir().expect("temp dir"),
        _nats: private_nats,
    };
    let ecr_yaml = format!(
        "service:\n  instance:\n    name: {ecr}\n    replica:\n      id: {ecr}-1\n\
         nats:\n  urls: [\"{nats}\"]\n\
         ecr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: \"{store_url}\"\n  cmx:\n    service-instance-name: {cmx}\n\
         auth:\n  enabled: false\n"
    );
    let cmx_yaml = format!(
        "service:\n  instance:\n    name: {cmx}\n    replica:\n      id: {cmx}-1\n\
         nats:\n  urls: [\"{nats}\"]\n\
         kaa:\n  cmx:\n    configuration-data-provider:\n      service-instance:\n        name: {ecr}\n\
         \x20   communication-service:\n      service-instance:\n        name: {kpc}\n\
         cmx:\n  bus: nats\n"
    );
    let kpc_yaml = format!(
        "service:\n  instance:\n    name: {kpc}\n    replica:\n      id: {kpc}-1\n\
         nats:\n  urls: [\"{nats}\"]\n\
         kpc:\n  mqtt:\n    listen: 127.0.0.1:0\n    auth:\n      enabled: false\n\
         \x20 extension-instances: [{cmx}]\n  accept-any-token: true\n"
    );
    let dir = p.dir.path().to_owned();
    let (child, line) = spawn(
        env!("CARGO_BIN_EXE_ecr"),
        "ecr",
        &dir,
        &ecr_yaml,
        "ecr listening on",
    );
    p.children.push(("ecr", child));
    let http = addr_after(&line, "http://");
    let (child, _) = spawn(
        env!("CARGO_BIN_EXE_cmx"),
        "cmx",
        &dir,
        &cmx_yaml,
        "cmx running",
    );
    p.children.push(("cmx", child));
    let (child, line) = spawn(
        env!("CARGO_BIN_EXE_kpc"),
        "kpc",
        &dir,
        &kpc_yaml,
        "kpc listening on",
    );
    p.children.push(("kpc", child));
    let mqtt = addr_after(&line, "mqtt://");
    let cmx: &'static str = Box::leak(cmx.into_boxed_str());
    Some((p, System { http, mqtt, cmx }))
}

macro_rules! e2e {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some((processes, sys)) = start(stringify!($name)).await else {
                return;
            };
            e2e_common::$name(sys).await;
            drop(processes);
        }
    )*};
}

e2e!(
    default_delivered,
    override_wins,
    push_within_one_second,
    offline_gets_only_latest,
    named_independent,
    applied_and_rejected_in_statuses,
    app_version_change,
    garbage_gets_errors,
    no_subscribe_delivery,
);

/// Kaa's official Python client against the processes configured as
/// `scripts/stack-nats.sh` configures them (`extension-instances: [cmx]`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_client() {
    let Some((processes, sys)) = start_private("official_python_client").await else {
        return;
    };
    e2e_common::official_python_client(sys).await;
    drop(processes);
}
