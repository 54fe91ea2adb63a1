//! End-to-end tests of the separate processes: the real `ecr`, `cmx`, `kpc` and
//! `epr` (endpoint register) binaries on the machine's NATS and a fresh PostgreSQL
//! database, driven by real MQTT devices and the REST APIs. Configured as the
//! embedded stack is (`kaa_examples::stack`): KPC validates tokens with the
//! register over 16/ECAP, and a token the register does not know is its own
//! endpoint ID. The behaviours are the ones `embedded.rs`
//! runs on the in-memory stack ([`kaa_testkit::for_each_e2e_behaviour`]).
//!
//! Each test starts its own three processes with instance names unique to the test
//! (so tests sharing the NATS server never answer each other), on ephemeral ports,
//! with its own database (dropped afterwards). Without NATS or PostgreSQL the test
//! prints `SKIPPED: …` and passes, unless `KAA_REQUIRE_SERVICES=1`.
//!
//! `official_python_client` needs the instance names `scripts/stack-nats.sh` uses
//! (`ecr`, `cmx`, `kpc`: Kaa's official client writes `cmx` into its topics), so it
//! runs on a private `nats-server` of its own, where those names meet nobody else.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kaa_bus::test_support::{NATS, POSTGRES, PrivateNatsServer};
use kaa_testkit::e2e::{System, unique};

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
    /// The MQTT listener of each KPC replica, in start order.
    kpc_mqtt: Vec<std::net::SocketAddr>,
    /// The endpoint register's REST API.
    register: std::net::SocketAddr,
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
fn spawn(
    bin: std::path::PathBuf,
    name: &'static str,
    dir: &Path,
    config: &str,
    banner: &str,
) -> (Child, String) {
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
    start_on(test, nats, names, None, 1).await
}

/// Starts ECR, CMX and KPC named `ecr`, `cmx` and `kpc` (as
/// `scripts/stack-nats.sh` names them) on a private `nats-server`, or returns
/// `None` (after a visible `SKIPPED:` line) when it or PostgreSQL is unavailable.
async fn start_private(test: &str) -> Option<(Processes, System)> {
    let server = PrivateNatsServer::start(test)?;
    let names = ["ecr".to_owned(), "cmx".to_owned(), "kpc".to_owned()];
    start_on(test, server.url(), names, Some(server), 1).await
}

async fn start_on(
    test: &str,
    nats: String,
    [ecr, cmx, kpc]: [String; 3],
    private_nats: Option<PrivateNatsServer>,
    kpc_replicas: usize,
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
        kpc_mqtt: Vec::new(),
        register: ([127, 0, 0, 1], 0).into(),
    };
    let epr = ecr.replacen("ecr", "epr", 1);
    let epr_yaml = format!(
        "service:\n  instance:\n    name: {epr}\n    replica:\n      id: {epr}-1\n\
         nats:\n  urls: [\"{nats}\"]\n\
         epr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: \"{store_url}\"\n\
         auth:\n  enabled: false\n"
    );
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
    let kpc_yaml = |replica: usize| {
        format!(
            "service:\n  instance:\n    name: {kpc}\n    replica:\n      id: {kpc}-{replica}\n\
             nats:\n  urls: [\"{nats}\"]\n\
             kpc:\n  mqtt:\n    listen: 127.0.0.1:0\n    auth:\n      enabled: false\n\
             \x20 extension-instances: [{cmx}]\n  accept-any-token: true\n\
             \x20 token-validation:\n    provider: {epr}\n    timeout: 5s\n"
        )
    };
    let dir = p.dir.path().to_owned();
    let (child, line) = spawn(
        kaa_testkit::service_binary("ecr"),
        "ecr",
        &dir,
        &ecr_yaml,
        "ecr listening on",
    );
    p.children.push(("ecr", child));
    let http = addr_after(&line, "http://");
    let (child, _) = spawn(
        kaa_testkit::service_binary("cmx"),
        "cmx",
        &dir,
        &cmx_yaml,
        "cmx running",
    );
    p.children.push(("cmx", child));
    let (child, line) = spawn(
        kaa_testkit::service_binary("epr"),
        "epr",
        &dir,
        &epr_yaml,
        "epr listening on",
    );
    p.children.push(("epr", child));
    p.register = addr_after(&line, "http://");
    for replica in 1..=kpc_replicas {
        let name = if replica == 1 { "kpc" } else { "kpc-2" };
        let (child, line) = spawn(
            kaa_testkit::service_binary("kpc"),
            name,
            &dir,
            &kpc_yaml(replica),
            "kpc listening on",
        );
        p.children.push((name, child));
        p.kpc_mqtt.push(addr_after(&line, "mqtt://"));
    }
    let mqtt = p.kpc_mqtt[0];
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
            kaa_testkit::e2e::$name(sys).await;
            drop(processes);
        }
    )*};
}

kaa_testkit::for_each_e2e_behaviour!(e2e);

/// The register on the separate processes: see
/// [`kaa_testkit::e2e::register_provisions_suspends_and_revokes`] (also on the
/// embedded stack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_provisions_suspends_and_revokes() {
    let Some((processes, sys)) = start("register_provisions_suspends_and_revokes").await else {
        return;
    };
    kaa_testkit::e2e::register_provisions_suspends_and_revokes(sys, processes.register).await;
    drop(processes);
}

/// Kaa's official Python client against the processes configured as
/// `scripts/stack-nats.sh` configures them (`extension-instances: [cmx]`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_client() {
    let Some((processes, sys)) = start_private("official_python_client").await else {
        return;
    };
    kaa_testkit::e2e::official_python_client(sys).await;
    drop(processes);
}

/// Two KPC replicas (same instance, replica IDs `-1` and `-2`) with the real CMX
/// and ECR: a device that reconnects to the other replica while its old connection
/// stays open keeps getting pushes there after the old connection ends (the old
/// replica dropped the endpoint from its session when the new one published
/// `connected`, so it does not tell CMX the device went offline), and the old
/// connection gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpc_replicas_a_moved_device_keeps_getting_pushes() {
    use kaa_testkit::e2e::{Device, QUIET, Rest};
    use serde_json::json;
    let test = "kpc_replicas_a_moved_device_keeps_getting_pushes";
    let Some(nats) = NATS.require(test) else {
        return;
    };
    let tag = unique(test).replace('_', "-");
    let names = [
        format!("ecr-{tag}"),
        format!("cmx-{tag}"),
        format!("kpc-{tag}"),
    ];
    let Some((processes, sys)) = start_on(test, nats, names, None, 2).await else {
        return;
    };
    let on_b = System {
        mqtt: processes.kpc_mqtt[1],
        ..sys
    };
    let rest = Rest::new(sys);
    let app = unique("app-replicas");
    let ep = unique("ep");
    rest.put_default(&app, None, &json!({"n": 0})).await;
    let mut old = Device::connect(sys, &app, &ep).await;
    let first = old.fetch(None, json!({"observe": true})).await;
    let held = first["configId"].as_str().unwrap().to_owned();
    old.report(None, json!({"configId": held})).await;
    rest.wait_status(&ep, |r| {
        r["configId"] == held.as_str() && r["status"] == "APPLIED"
    })
    .await;

    // The device comes back through replica 2; its old connection stays open.
    let mut new = Device::connect(on_b, &app, &ep).await;
    let again = new.fetch(None, json!({"observe": true})).await;
    assert_eq!(again["configId"], held.as_str());
    new.report(None, json!({"configId": held})).await;
    // Replica 1 hears of the new session (bus latency).
    tokio::time::sleep(QUIET).await;
    let id = rest.put_endpoint(&ep, &app, None, &json!({"n": 1})).await;
    let push = new.expect(&new.push_topic(None)).await;
    assert_eq!(push.json, json!({"configId": id, "config": {"n": 1}}));
    new.report(None, json!({"configId": id})).await;
    let stray = old.drain(QUIET).await;
    assert!(stray.is_empty(), "the old connection got {stray:?}");

    // The old connection ends: CMX must not take the device for offline.
    old.disconnect().await;
    tokio::time::sleep(QUIET).await;
    let id = rest.put_endpoint(&ep, &app, None, &json!({"n": 2})).await;
    let push = new.expect(&new.push_topic(None)).await;
    assert_eq!(push.json, json!({"configId": id, "config": {"n": 2}}));
    drop(processes);
}
