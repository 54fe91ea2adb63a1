//! Helpers of the fault-injection test (`fault_stack.rs`): a private PostgreSQL
//! cluster, the three services as restartable processes, a fleet of reconnecting
//! MQTT devices, a steady REST writer that records every acknowledged write, and
//! the convergence check that asks ECR (over 6/CDTP) what each device should hold.
//!
//! Nothing here touches the machine's shared servers: NATS is a
//! [`PrivateNatsServer`](kaa_bus::test_support::PrivateNatsServer) and PostgreSQL a
//! [`PrivatePostgres`] cluster (`initdb` into a temporary directory, run as the
//! `postgres` user when the test runs as root), both on ephemeral ports.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kaa_bus::Bus;
use kaa_bus::test_support::{free_port, skip};
use kaa_ism::avro::{Decode, Encode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::mini_mqtt;
use mini_mqtt::{connect_packet, publish_packet, read_packet};

/// How long a service may take to print its start banner.
pub const START: Duration = Duration::from_secs(30);

/// Sends `signal` (`TERM`, `INT`, `KILL`) to `pid` with the `kill` utility (the
/// workspace forbids `unsafe`, so no `libc::kill`).
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits until `child` exits, at most `limit`; kills it after that.
pub fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

/// `KAA_TEST_PG_BIN`: the directory with `initdb` and `postgres`.
pub const ENV_PG_BIN: &str = "KAA_TEST_PG_BIN";
/// Where the PostgreSQL server binaries are looked for when `KAA_TEST_PG_BIN` is unset.
pub const DEFAULT_PG_BIN: &[&str] = &[
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
];

/// A PostgreSQL cluster of the test's own: `initdb` into a temporary directory, the
/// server on 127.0.0.1 and an ephemeral port with its socket in that directory.
/// Run as the `postgres` user (through `setpriv`, which execs, so the child is the
/// postmaster itself) when the test runs as root, since `initdb` refuses root.
/// Killed and removed on drop. Never touches the machine's cluster.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    starts: u32,
}

impl PrivatePostgres {
    fn find_bin() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os(ENV_PG_BIN).filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(dir);
            return dir.join("initdb").is_file().then_some(dir);
        }
        DEFAULT_PG_BIN
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if running_as_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Creates and starts a cluster for `test`, or skips visibly (failing under
    /// `KAA_REQUIRE_SERVICES=1`) when the binaries (or `setpriv` and a `postgres`
    /// user, as root) are missing or the cluster does not start.
    #[track_caller]
    pub fn start(test: &str) -> Option<Self> {
        let Some(bin) = Self::find_bin() else {
            skip(
                test,
                &format!("PostgreSQL server binaries not found ({ENV_PG_BIN}, {DEFAULT_PG_BIN:?})"),
            );
            return None;
        };
        match Self::launch(bin) {
            Ok(pg) => Some(pg),
            Err(e) => {
                skip(test, &format!("private PostgreSQL did not start: {e}"));
                None
            }
        }
    }

    fn launch(bin: PathBuf) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("kaa-fault-pg-").tempdir()?;
        if running_as_root() {
            let id = |flag: &str| -> std::io::Result<u32> {
                let out = Command::new("id").args([flag, "postgres"]).output()?;
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .map_err(|_| std::io::Error::other("no postgres user"))
            };
            std::os::unix::fs::chown(dir.path(), Some(id("-u")?), Some(id("-g")?))?;
        }
        let mut pg = PrivatePostgres {
            bin,
            port: free_port()?,
            dir,
            child: None,
            starts: 0,
        };
        let log = std::fs::File::create(pg.dir.path().join("initdb.log"))?;
        let status = pg
            .command("initdb")
            .arg("-D")
            .arg(pg.data())
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()?;
        if !status.success() {
            let log = std::fs::read_to_string(pg.dir.path().join("initdb.log")).unwrap_or_default();
            return Err(std::io::Error::other(format!("initdb failed: {log}")));
        }
        pg.spawn()?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The postmaster's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            self.starts += 1;
            let log = std::fs::File::create(
                self.dir
                    .path()
                    .join(format!("postgres-{}.log", self.starts)),
            )?;
            let mut child = self
                .command("postgres")
                .arg("-D")
                .arg(self.data())
                .args(["-p", &self.port.to_string(), "-k"])
                .arg(self.dir.path())
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    // WAL still reaches the kernel before a commit returns, which is
                    // what survives a killed process; only an OS crash needs fsync.
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            // Ready = a query works (not merely a listening socket: recovery after a
            // crash answers "the database system is starting up").
            loop {
                if self.query_ok() {
                    self.child = Some(child);
                    return Ok(());
                }
                if let Ok(Some(_)) = child.try_wait() {
                    // E.g. orphaned backends of a killed postmaster still hold the
                    // shared memory: try again shortly.
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(std::io::Error::other(format!(
                        "postgres did not accept queries within 30 s; see {}",
                        self.dir.path().display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if std::time::Instant::now() >= deadline {
                return Err(std::io::Error::other("postgres kept exiting at start"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn query_ok(&self) -> bool {
        Command::new(self.bin.join("psql"))
            .arg(self.url())
            .args(["-qAtc", "SELECT 1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops the server with `sig` (`INT`: fast shutdown, `KILL`: crash) and waits
    /// until the postmaster is gone.
    pub fn stop(&mut self, sig: &str) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), sig);
            wait_exit(&mut child, Duration::from_secs(30));
        }
    }

    /// Starts the server again on the same port and data directory (after a crash it
    /// runs recovery) and waits until it answers queries.
    pub fn start_again(&mut self) -> std::io::Result<()> {
        self.stop("INT");
        self.spawn()
    }

    /// The last lines of the current server log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("postgres-{}.log", self.starts)),
        )
        .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "QUIT");
            wait_exit(&mut child, Duration::from_secs(10));
        }
    }
}

// ---------------------------------------------------------------------------
// Service processes
// ---------------------------------------------------------------------------

/// The YAML of one ECR, one CMX and one KPC process wired to each other on one
/// NATS server, named `ecr-<tag>`, `cmx-<tag>`, `kpc-<tag>` (replica `-1`),
/// ECR on `store` with REST on `http_port`, KPC's MQTT on `mqtt_port` (no
/// authentication, any token), CMX with a 3 s 6/CDTP timeout: the stack the fault
/// tests start as separate processes.
pub struct ThreeServices {
    /// ECR's instance name.
    pub ecr_name: String,
    /// CMX's instance name (the extension instance devices name).
    pub cmx_name: String,
    /// KPC's instance name.
    pub kpc_name: String,
    /// `ecr.yaml`.
    pub ecr_yaml: String,
    /// `cmx.yaml`.
    pub cmx_yaml: String,
    /// `kpc.yaml`.
    pub kpc_yaml: String,
}

impl ThreeServices {
    /// The three configurations (see the type).
    pub fn new(tag: &str, nats_url: &str, store: &str, http_port: u16, mqtt_port: u16) -> Self {
        let (ecr_name, cmx_name, kpc_name) = (
            format!("ecr-{tag}"),
            format!("cmx-{tag}"),
            format!("kpc-{tag}"),
        );
        let url = nats_url;
        let ecr_yaml = format!(
            "service:\n  instance:\n    name: {ecr_name}\n    replica:\n      id: {ecr_name}-1\n\
             nats:\n  urls: [\"{url}\"]\n\
             ecr:\n  http:\n    listen: 127.0.0.1:{http_port}\n  store:\n    url: \"{store}\"\n  cmx:\n    service-instance-name: {cmx_name}\n\
             auth:\n  enabled: false\n"
        );
        let cmx_yaml = format!(
            "service:\n  instance:\n    name: {cmx_name}\n    replica:\n      id: {cmx_name}-1\n\
             nats:\n  urls: [\"{url}\"]\n\
             kaa:\n  cmx:\n    configuration-data-provider:\n      service-instance:\n        name: {ecr_name}\n\
             \x20   communication-service:\n      service-instance:\n        name: {kpc_name}\n\
             cmx:\n  bus: nats\n  cdtp-timeout-ms: 3000\n  shutdown-grace-ms: 2000\n"
        );
        let kpc_yaml = format!(
            "service:\n  instance:\n    name: {kpc_name}\n    replica:\n      id: {kpc_name}-1\n\
             nats:\n  urls: [\"{url}\"]\n\
             kpc:\n  mqtt:\n    listen: 127.0.0.1:{mqtt_port}\n    auth:\n      enabled: false\n\
             \x20 extension-instances: [{cmx_name}]\n  accept-any-token: true\n"
        );
        ThreeServices {
            ecr_name,
            cmx_name,
            kpc_name,
            ecr_yaml,
            cmx_yaml,
            kpc_yaml,
        }
    }
}

/// One service binary with its configuration, restartable on the same ports. Its
/// stderr (tracing logs) is appended to `<dir>/<name>.log` across restarts.
pub struct ServiceProcess {
    /// `ecr`, `cmx` or `kpc`, or a replica's unit name (`cmx-2`): its files are
    /// `<dir>/<name>.yaml` and `<dir>/<name>.log`.
    pub name: String,
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    banner: &'static str,
    child: Option<Child>,
    /// How many times it was started.
    pub starts: u32,
}

impl ServiceProcess {
    /// Writes `config` to `<dir>/<name>.yaml` and starts the binary `name` (see
    /// [`service_binary`](crate::service_binary)).
    pub fn start(name: &'static str, dir: &Path, config: &str, banner: &'static str) -> Self {
        ServiceProcess::start_unit(name, name, dir, config, banner)
    }

    /// Like [`ServiceProcess::start`] for one replica of the binary `binary`, its
    /// files named after `unit` (e.g. `cmx-2.yaml`, `cmx-2.log`).
    pub fn start_unit(
        binary: &str,
        unit: &str,
        dir: &Path,
        config: &str,
        banner: &'static str,
    ) -> Self {
        let path = dir.join(format!("{unit}.yaml"));
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(config.as_bytes()))
            .expect("config written");
        let mut s = ServiceProcess {
            name: unit.to_owned(),
            bin: crate::service_binary(binary),
            config: path,
            log: dir.join(format!("{unit}.log")),
            banner,
            child: None,
            starts: 0,
        };
        s.spawn();
        s
    }

    /// Starts the process (again) and waits for its banner line on stdout.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        let deadline = std::time::Instant::now() + START;
        loop {
            self.starts += 1;
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("log file");
            let _ = writeln!(log, "===== start #{} =====", self.starts);
            let mut child = Command::new(&self.bin)
                .arg(&self.config)
                // `KAA_FAULT_SERVICE_LOG` sets the services' `RUST_LOG` (e.g.
                // `info,kaa_cmx=debug,kaa_kpc=debug` to see pushes and deliveries).
                .env(
                    "RUST_LOG",
                    std::env::var("KAA_FAULT_SERVICE_LOG").unwrap_or_else(|_| "info".to_owned()),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .expect("binary starts");
            let stdout = child.stdout.take().expect("stdout");
            let (tx, rx) = std::sync::mpsc::channel();
            let banner = self.banner;
            std::thread::spawn(move || {
                let mut sent = false;
                // Keep reading after the banner so the pipe never fills.
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if !sent && line.starts_with(banner) {
                        let _ = tx.send(());
                        sent = true;
                    }
                }
            });
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if rx.recv_timeout(left).is_ok() {
                self.child = Some(child);
                return;
            }
            // Exited before its banner (e.g. its port still held): retry until the deadline.
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            let _ = child.kill();
            let _ = child.wait();
            if !exited || std::time::Instant::now() >= deadline {
                panic!(
                    "{} did not start within {START:?}; log:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the process with `sig` (`TERM`: graceful, `KILL`) and waits for it.
    pub fn stop(&mut self, sig: &str) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), sig);
            wait_exit(&mut child, Duration::from_secs(20));
        }
    }

    /// Its whole log, every start (for counting what it logged).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------

/// The configuration names every device observes: the default and `network`.
pub const NAMES: [Option<&str>; 2] = [None, Some("network")];

/// What one device knows.
#[derive(Debug, Default)]
pub struct DeviceState {
    /// The last configuration ID received per entry of [`NAMES`] (`""`: absent).
    pub held: Mutex<[Option<String>; 2]>,
    /// True while its MQTT connection is up (CONNACK received).
    pub connected: AtomicBool,
    /// Connections made (the first one included).
    pub connections: AtomicU64,
    /// Error responses received (each makes the device ask again).
    pub errors: AtomicU64,
    /// Requests that got no answer within [`REQUEST_TIMEOUT`] (each asked again).
    pub timeouts: AtomicU64,
    /// Every configuration received (response or push), per entry of [`NAMES`], in
    /// order: its config ID and the `seq` in its content (every write of the
    /// [`Writer`] carries one).
    pub history: Mutex<[Vec<Received>; 2]>,
    /// Configurations received with the config ID the device received last for
    /// that name (the same configuration delivered twice in a row).
    pub duplicates: AtomicU64,
}

/// One configuration a device received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Its config ID.
    pub config_id: String,
    /// The `seq` in its content (`None`: the content has none).
    pub seq: Option<u64>,
}

/// A device that received a configuration older than one it had received before
/// for the same name (see [`Fleet::regressions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regression {
    /// The device's index.
    pub device: usize,
    /// The configuration name.
    pub name: Option<&'static str>,
    /// Its position in the device's history of that name.
    pub at: usize,
    /// The newest `seq` it had received before.
    pub newest: u64,
    /// The older `seq` it received then.
    pub received: u64,
}

/// How long a device waits for the answer to a request before asking again.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The fleet: one task per device, each one MQTT 3.1.1 connection that reconnects
/// (every 250 ms) whenever it drops, as a real device does. With several MQTT
/// addresses ([`Fleet::start_on`]; e.g. replicas of KPC) device `i` connects to
/// address `i % n` first and, whenever its connection drops or a connection attempt
/// fails, tries the next one (as a device behind a load balancer does).
pub struct Fleet {
    /// Per device, by index.
    pub devices: Vec<Arc<DeviceState>>,
    /// Endpoint IDs (= tokens), by index.
    pub endpoints: Vec<String>,
    /// The app version all devices use.
    pub app: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Fleet {
    /// Starts `n` devices against `mqtt` (CMX instance `cmx`), at most 100
    /// connecting at a time.
    pub fn start(n: usize, mqtt: SocketAddr, cmx: &str, app: &str, tag: &str) -> Fleet {
        Fleet::start_on(n, &[mqtt], cmx, app, tag)
    }

    /// Starts `n` devices spread round robin over the MQTT addresses `mqtt`.
    ///
    /// # Panics
    ///
    /// When `mqtt` is empty.
    pub fn start_on(n: usize, mqtt: &[SocketAddr], cmx: &str, app: &str, tag: &str) -> Fleet {
        assert!(!mqtt.is_empty(), "at least one MQTT address");
        let gate = Arc::new(Semaphore::new(100));
        let mut devices = Vec::with_capacity(n);
        let mut endpoints = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let state = Arc::new(DeviceState::default());
            let token = format!("{tag}-ep-{i}");
            tasks.push(tokio::spawn(device_loop(
                mqtt.to_vec(),
                i % mqtt.len(),
                format!("kp1/{app}/{cmx}/{token}"),
                format!("{tag}-dev-{i}"),
                Arc::clone(&state),
                Arc::clone(&gate),
            )));
            devices.push(state);
            endpoints.push(token);
        }
        Fleet {
            devices,
            endpoints,
            app: app.to_owned(),
            tasks,
        }
    }

    /// How many devices are connected now.
    pub fn connected(&self) -> usize {
        self.devices
            .iter()
            .filter(|d| d.connected.load(Ordering::Relaxed))
            .count()
    }

    /// Totals over all devices: (connections made, error responses, request
    /// timeouts).
    pub fn totals(&self) -> (u64, u64, u64) {
        let sum = |f: fn(&DeviceState) -> &AtomicU64| -> u64 {
            self.devices
                .iter()
                .map(|d| f(d).load(Ordering::Relaxed))
                .sum()
        };
        (
            sum(|d| &d.connections),
            sum(|d| &d.errors),
            sum(|d| &d.timeouts),
        )
    }

    /// Configurations received twice in a row (same config ID for the same name),
    /// over all devices: redundant deliveries, counted, not an error.
    pub fn duplicates(&self) -> u64 {
        self.devices
            .iter()
            .map(|d| d.duplicates.load(Ordering::Relaxed))
            .sum()
    }

    /// Every place where a device received, for a name, a configuration whose `seq`
    /// is lower than the highest it had received for that name before: it went back
    /// to an older write.
    ///
    /// Sound because of how the [`Writer`] writes: one PUT at a time, each with a
    /// larger `seq` than the one before, the next one sent only after the previous
    /// one's answer, so ECR's commit order is `seq` order (the order
    /// [`lost_writes`] assumes too); and it never deletes, so an endpoint's
    /// effective configuration is its app default's latest write until the first
    /// override for it, then its latest override, whose `seq` is larger than every
    /// default written before it.
    pub fn regressions(&self) -> Vec<Regression> {
        let mut out = Vec::new();
        for (device, d) in self.devices.iter().enumerate() {
            let history = d.history.lock().unwrap();
            for (n, name) in NAMES.iter().enumerate() {
                let mut newest: Option<u64> = None;
                for (at, r) in history[n].iter().enumerate() {
                    let Some(seq) = r.seq else { continue };
                    match newest {
                        Some(top) if seq < top => out.push(Regression {
                            device,
                            name: *name,
                            at,
                            newest: top,
                            received: seq,
                        }),
                        _ => newest = Some(seq),
                    }
                }
            }
        }
        out
    }

    /// The configurations device `i` received for the entry `n` of [`NAMES`].
    pub fn history(&self, i: usize, n: usize) -> Vec<Received> {
        self.devices[i].history.lock().unwrap()[n].clone()
    }

    /// Waits until every device is connected and holds a configuration for every
    /// name, at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let ready = self.devices.iter().all(|d| {
                d.connected.load(Ordering::Relaxed)
                    && d.held.lock().unwrap().iter().all(Option::is_some)
            });
            if ready {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn name_resource(name: Option<&str>) -> String {
    match name {
        Some(n) => format!("config/json/{n}"),
        None => "config/json".to_owned(),
    }
}

/// The request of `name` saying what the device holds, with observe.
fn request_packet(base: &str, name: Option<&str>, held: Option<&str>, request_id: u32) -> Vec<u8> {
    let body = match held.filter(|h| !h.is_empty()) {
        Some(id) => json!({"observe": true, "configId": id}),
        None => json!({"observe": true}),
    };
    publish_packet(
        &format!("{base}/{}/{request_id}", name_resource(name)),
        body.to_string().as_bytes(),
    )
}

/// One device, forever: connect, ask for every name (saying what it holds), then
/// record each response and push and report it applied; reconnect (to the next of
/// the `mqtt` addresses) when the connection drops, and ask again after an error
/// response.
async fn device_loop(
    mqtt: Vec<SocketAddr>,
    mut next_addr: usize,
    base: String,
    client_id: String,
    state: Arc<DeviceState>,
    gate: Arc<Semaphore>,
) {
    let mut next_request = 1u32;
    loop {
        let addr = mqtt[next_addr % mqtt.len()];
        let session = async {
            let permit = gate.acquire().await;
            let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
                .await
                .map_err(|_| std::io::Error::other("connect timeout"))??;
            let _ = s.set_nodelay(true);
            // No keep-alive: a dead KPC closes the socket.
            s.write_all(&connect_packet(&client_id, 0)).await?;
            let (first, body) = tokio::time::timeout(Duration::from_secs(10), read_packet(&mut s))
                .await
                .map_err(|_| std::io::Error::other("CONNACK timeout"))??;
            if first >> 4 != 2 || body.get(1) != Some(&0) {
                return Err(std::io::Error::other("CONNACK refused"));
            }
            drop(permit);
            state.connected.store(true, Ordering::Relaxed);
            state.connections.fetch_add(1, Ordering::Relaxed);
            let mut out = Vec::new();
            {
                let held = state.held.lock().unwrap().clone();
                for (i, name) in NAMES.iter().enumerate() {
                    out.extend(request_packet(
                        &base,
                        *name,
                        held[i].as_deref(),
                        next_request,
                    ));
                    next_request += 1;
                }
            }
            s.write_all(&out).await?;
            let mut outstanding = [Some(Instant::now()); 2];
            let prefix = format!("{base}/");
            loop {
                let packet =
                    tokio::time::timeout(Duration::from_secs(1), read_packet(&mut s)).await;
                let Ok(packet) = packet else {
                    for (index, name) in NAMES.iter().enumerate() {
                        if outstanding[index].is_some_and(|at| at.elapsed() >= REQUEST_TIMEOUT) {
                            state.timeouts.fetch_add(1, Ordering::Relaxed);
                            let held = state.held.lock().unwrap()[index].clone();
                            let p = request_packet(&base, *name, held.as_deref(), next_request);
                            next_request += 1;
                            s.write_all(&p).await?;
                            outstanding[index] = Some(Instant::now());
                        }
                    }
                    continue;
                };
                let (first, body) = packet?;
                if first >> 4 != 3 || body.len() < 2 {
                    continue;
                }
                let qos = (first >> 1) & 3;
                let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
                let Some(topic) = body.get(2..2 + tlen) else {
                    continue;
                };
                let topic = String::from_utf8_lossy(topic).into_owned();
                let mut rest = 2 + tlen;
                if qos > 0 {
                    if let Some(id) = body.get(rest..rest + 2) {
                        s.write_all(&[0x40, 2, id[0], id[1]]).await?;
                    }
                    rest += 2;
                }
                let payload = body.get(rest..).unwrap_or_default();
                let Some(resource) = topic.strip_prefix(&prefix) else {
                    continue;
                };
                // config/json[/network][/<id>]/status|error
                let parts: Vec<&str> = resource.split('/').collect();
                if parts.len() < 3 || parts[0] != "config" || parts[1] != "json" {
                    continue;
                }
                let last = parts[parts.len() - 1];
                let middle = &parts[2..parts.len() - 1];
                let name = match middle.first() {
                    Some(n) if n.parse::<u32>().is_err() => Some(*n),
                    _ => None,
                };
                let Some(index) = NAMES.iter().position(|n| *n == name) else {
                    continue;
                };
                if last == "error" {
                    // The platform could not answer (e.g. 504 while a service was
                    // down): ask again shortly, as a device does.
                    state.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let held = state.held.lock().unwrap()[index].clone();
                    let p = request_packet(&base, name, held.as_deref(), next_request);
                    next_request += 1;
                    s.write_all(&p).await?;
                    outstanding[index] = Some(Instant::now());
                    continue;
                }
                outstanding[index] = None;
                let Ok(v) = serde_json::from_slice::<Value>(payload) else {
                    continue;
                };
                let Some(id) = v["configId"].as_str() else {
                    continue; // `{}`: what it holds is current
                };
                state.held.lock().unwrap()[index] = Some(id.to_owned());
                {
                    let mut history = state.history.lock().unwrap();
                    let list = &mut history[index];
                    if list.last().is_some_and(|r| r.config_id == id) {
                        state.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    list.push(Received {
                        config_id: id.to_owned(),
                        seq: v["config"]["seq"].as_u64(),
                    });
                }
                if !id.is_empty() {
                    let applied = match name {
                        Some(n) => format!("{base}/applied/json/{n}"),
                        None => format!("{base}/applied/json"),
                    };
                    s.write_all(&publish_packet(
                        &applied,
                        json!({"configId": id}).to_string().as_bytes(),
                    ))
                    .await?;
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), std::io::Error>(())
        };
        let _ = session.await;
        state.connected.store(false, Ordering::Relaxed);
        next_addr += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------

/// What a write is to: the app version's default (`endpoint` `None`) or an
/// endpoint's own configuration, for a configuration name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The endpoint, or `None` for the app version's default.
    pub endpoint: Option<String>,
    /// The configuration name (`None`: default).
    pub name: Option<&'static str>,
}

/// One PUT the writer made. Every PUT body is `{"seq": <seq>, …}`, unique.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Its sequence number (in the body).
    pub seq: u64,
    /// What it wrote to.
    pub key: Key,
    /// True when ECR answered 200.
    pub acked: bool,
    /// Which of the writer's ECR addresses it went to (index).
    pub via: usize,
}

/// The writer's log, shared with the test.
#[derive(Debug, Default)]
pub struct WriteLog {
    /// Every attempt, in order.
    pub attempts: Mutex<Vec<Attempt>>,
}

impl WriteLog {
    /// (acknowledged, failed) counts per ECR address of the writer, by index.
    pub fn counts_by_address(&self) -> Vec<(usize, usize)> {
        let a = self.attempts.lock().unwrap();
        let n = a.iter().map(|x| x.via + 1).max().unwrap_or(0);
        let mut out = vec![(0, 0); n];
        for x in a.iter() {
            if x.acked {
                out[x.via].0 += 1;
            } else {
                out[x.via].1 += 1;
            }
        }
        out
    }

    /// (acknowledged, failed) counts.
    pub fn counts(&self) -> (usize, usize) {
        let a = self.attempts.lock().unwrap();
        let acked = a.iter().filter(|x| x.acked).count();
        (acked, a.len() - acked)
    }
}

/// The ECR REST client of the test.
#[derive(Clone)]
pub struct Rest {
    base: String,
    http: reqwest::Client,
}

impl Rest {
    /// The API at `addr`.
    pub fn new(addr: SocketAddr) -> Rest {
        Rest {
            base: format!("http://{addr}/api/v1"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("HTTP client"),
        }
    }

    fn url(&self, app: &str, key: &Key) -> String {
        let q = key.name.map(|n| format!("?name={n}")).unwrap_or_default();
        match &key.endpoint {
            Some(ep) => format!("{}/endpoints/{ep}/app-versions/{app}{q}", self.base),
            None => format!("{}/app-versions/{app}{q}", self.base),
        }
    }

    /// PUTs `config`; true when answered 200.
    pub async fn put(&self, app: &str, key: &Key, config: &Value) -> bool {
        let r = self
            .http
            .put(self.url(app, key))
            .header("content-type", "application/json")
            .body(config.to_string())
            .send()
            .await;
        matches!(r, Ok(r) if r.status() == 200)
    }

    /// The `seq` of what ECR holds for `key` (`None`: nothing), or an error text.
    pub async fn get_seq(&self, app: &str, key: &Key) -> Result<Option<u64>, String> {
        let r = self
            .http
            .get(self.url(app, key))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() == 404 {
            return Ok(None);
        }
        if r.status() != 200 {
            return Err(format!("GET: {}", r.status()));
        }
        let body: Value = r.json().await.map_err(|e| e.to_string())?;
        let config: Value = serde_json::from_str(body["config"].as_str().unwrap_or("null"))
            .map_err(|e| e.to_string())?;
        Ok(config["seq"].as_u64())
    }
}

/// A writer task: one PUT every `interval` until paused or dropped, cycling through
/// an endpoint override (of one of the first `overridden` endpoints), the app
/// version's default, another override, and the `network` default. With several
/// ECR addresses ([`Writer::start_on`]; replicas of ECR) the PUTs alternate between
/// them (each kind of write through each address in turn); the writer still makes
/// one PUT at a time.
pub struct Writer {
    /// The log.
    pub log: Arc<WriteLog>,
    running: Arc<AtomicBool>,
    busy: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Writer {
    /// Starts writing.
    pub fn start(
        rest: Rest,
        app: String,
        endpoints: Vec<String>,
        overridden: usize,
        interval: Duration,
    ) -> Writer {
        Writer::start_on(vec![rest], app, endpoints, overridden, interval)
    }

    /// Starts writing, alternating between the ECR APIs `rests`.
    ///
    /// # Panics
    ///
    /// When `rests` is empty.
    pub fn start_on(
        rests: Vec<Rest>,
        app: String,
        endpoints: Vec<String>,
        overridden: usize,
        interval: Duration,
    ) -> Writer {
        assert!(!rests.is_empty(), "at least one ECR address");
        let log = Arc::new(WriteLog::default());
        let running = Arc::new(AtomicBool::new(true));
        let busy = Arc::new(AtomicBool::new(false));
        let task = {
            let (log, running, busy) = (Arc::clone(&log), Arc::clone(&running), Arc::clone(&busy));
            tokio::spawn(async move {
                let mut seq = 0u64;
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if !running.load(Ordering::Acquire) {
                        continue;
                    }
                    busy.store(true, Ordering::Release);
                    seq += 1;
                    let key = match seq % 4 {
                        0 | 2 => Key {
                            endpoint: Some(
                                endpoints[(seq as usize / 4 * 7 + seq as usize % 4) % overridden]
                                    .clone(),
                            ),
                            name: None,
                        },
                        1 => Key {
                            endpoint: None,
                            name: None,
                        },
                        _ => Key {
                            endpoint: None,
                            name: Some("network"),
                        },
                    };
                    // Every fourth write is of the same kind: shift by one every
                    // cycle so each kind goes through every address.
                    let via = (seq as usize + seq as usize / 4) % rests.len();
                    let acked = rests[via].put(&app, &key, &json!({ "seq": seq })).await;
                    log.attempts.lock().unwrap().push(Attempt {
                        seq,
                        key,
                        acked,
                        via,
                    });
                    busy.store(false, Ordering::Release);
                }
            })
        };
        Writer {
            log,
            running,
            busy,
            task,
        }
    }

    /// Stops writing and waits until the PUT in progress (if any) has finished.
    pub async fn pause(&self) {
        self.running.store(false, Ordering::Release);
        while self.busy.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Writes again.
    pub fn resume(&self) {
        self.running.store(true, Ordering::Release);
    }
}

/// Checks that no acknowledged write is lost: for every key written, ECR holds the
/// last acknowledged write, or a later attempt that failed (its fate was unknown to
/// the writer: the store may have committed it before the error). Returns the keys
/// that break this, with what was found.
pub async fn lost_writes(rest: &Rest, app: &str, log: &WriteLog) -> Vec<String> {
    let attempts = log.attempts.lock().unwrap().clone();
    let mut by_key: HashMap<Key, Vec<Attempt>> = HashMap::new();
    for a in attempts {
        by_key.entry(a.key.clone()).or_default().push(a);
    }
    let mut lost = Vec::new();
    for (key, list) in by_key {
        let last_acked = list.iter().rposition(|a| a.acked);
        let allowed: Vec<u64> = match last_acked {
            Some(i) => list[i..].iter().map(|a| a.seq).collect(),
            None => continue, // nothing acknowledged: nothing to lose
        };
        let mut found = rest.get_seq(app, &key).await;
        for _ in 0..20 {
            if found.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            found = rest.get_seq(app, &key).await;
        }
        match found {
            Ok(Some(seq)) if allowed.contains(&seq) => {}
            other => lost.push(format!(
                "{key:?}: holds {other:?}, acknowledged {:?} (allowed {allowed:?})",
                last_acked.map(|i| list[i].seq)
            )),
        }
    }
    lost
}

// ---------------------------------------------------------------------------
// Convergence
// ---------------------------------------------------------------------------

/// Asks ECR over 6/CDTP what it serves for (`endpoint`, `name`): the config ID, or
/// `""` when there is none.
pub async fn served(
    bus: &dyn Bus,
    ecr: &str,
    app: &str,
    endpoint: &str,
    name: Option<&str>,
) -> Result<String, String> {
    let request = kaa_cdtp::ConfigRequest {
        correlation_id: uuid::Uuid::new_v4().to_string().into(),
        timestamp: kaa_examples::cmx::now().0,
        timeout: 5000,
        app_version_name: app.into(),
        endpoint_id: endpoint.into(),
        config_id: None,
        config_name: name.map(Into::into),
    };
    let reply = bus
        .request(
            &format!("kaa.v1.service.{ecr}.cdtp.request"),
            Bytes::from(request.to_vec()),
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| e.to_string())?;
    let response = kaa_cdtp::ConfigResponse::decode(&reply.payload).map_err(|e| e.to_string())?;
    if response.status_code != 200 {
        return Err(format!("CDTP status {}", response.status_code));
    }
    Ok(response.config_id.as_deref().unwrap_or_default().to_owned())
}

/// The devices whose held configurations differ from what ECR serves, as
/// `(device index, name, held, served)`; at most `limit` are described.
pub async fn stale_devices(
    bus: Arc<dyn Bus>,
    ecr: &str,
    fleet: &Fleet,
) -> Result<Vec<(usize, Option<&'static str>, Option<String>, String)>, String> {
    use futures::StreamExt;
    let jobs = (0..fleet.devices.len())
        .flat_map(|i| NAMES.iter().enumerate().map(move |(n, name)| (i, n, *name)));
    let results: Vec<_> = futures::stream::iter(jobs)
        .map(|(i, n, name)| {
            let bus = Arc::clone(&bus);
            let ep = fleet.endpoints[i].clone();
            let app = fleet.app.clone();
            async move {
                let served = served(bus.as_ref(), ecr, &app, &ep, name).await;
                (i, n, name, served)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut stale = Vec::new();
    for (i, n, name, served) in results {
        let served = served?;
        let held = fleet.devices[i].held.lock().unwrap()[n].clone();
        if held.as_deref() != Some(served.as_str()) {
            stale.push((i, name, held, served));
        }
    }
    stale.sort_by_key(|s| s.0);
    Ok(stale)
}

// ---------------------------------------------------------------------------
// NATS cluster
// ---------------------------------------------------------------------------

/// Which node of a NATS cluster holds the client connection named `name` (a
/// service names its connection after its replica ID): the index into `monitors`,
/// the nodes' HTTP monitoring URLs
/// ([`PrivateNatsCluster::monitor_url`](kaa_bus::test_support::PrivateNatsCluster::monitor_url)),
/// found in each node's `/connz`. `None` when no running node lists it.
///
/// A client given several URLs picks one at random (async-nats shuffles them), so
/// asking the servers is how a test knows where a service is connected.
pub async fn nats_node_of(monitors: &[String], name: &str) -> Option<usize> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    for (i, monitor) in monitors.iter().enumerate() {
        let Ok(r) = http
            .get(format!("{monitor}/connz?limit=100000"))
            .send()
            .await
        else {
            continue; // a node that is down
        };
        let Ok(body) = r.json::<Value>().await else {
            continue;
        };
        let listed = body["connections"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"].as_str() == Some(name)));
        if listed {
            return Some(i);
        }
    }
    None
}

// ---------------------------------------------------------------------------
// One fault's window: convergence, counts, the report
// ---------------------------------------------------------------------------

/// Waits until every device of `fleet` holds, per name, what the provider `ecr`
/// serves ([`stale_devices`]) and all `devices` are connected, asking every 250 ms
/// for up to `limit` after `since`. `Ok`: how long after `since`; `Err`: what was
/// still wrong at the last look (at most five examples).
pub async fn converge(
    probe: &Arc<dyn Bus>,
    ecr: &str,
    fleet: &Fleet,
    devices: usize,
    since: Instant,
    limit: Duration,
) -> Result<Duration, Vec<String>> {
    loop {
        let last = match stale_devices(Arc::clone(probe), ecr, fleet).await {
            Ok(stale) if stale.is_empty() && fleet.connected() == devices => {
                return Ok(since.elapsed());
            }
            Ok(stale) if stale.is_empty() => {
                vec![format!("{} of {devices} connected", fleet.connected())]
            }
            Ok(stale) => stale
                .into_iter()
                .take(5)
                .map(|s| format!("{s:?}"))
                .collect(),
            Err(e) => vec![format!("asking ECR: {e}")],
        };
        if since.elapsed() > limit {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The writer's and the fleet's counters when a fault's window opened.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    acked: usize,
    failed: usize,
    totals: (u64, u64, u64),
}

impl Window {
    /// Opens a window: remembers the counters now.
    pub fn open(log: &WriteLog, fleet: &Fleet) -> Window {
        let (acked, failed) = log.counts();
        Window {
            acked,
            failed,
            totals: fleet.totals(),
        }
    }

    /// What happened in the window, for a report row: writes acknowledged,
    /// failed and `lost` (of all acknowledged so far), then the devices'
    /// reconnects, error answers and request timeouts.
    pub fn describe(&self, log: &WriteLog, fleet: &Fleet, lost: usize) -> (String, String) {
        let (acked, failed) = log.counts();
        let totals = fleet.totals();
        (
            format!(
                "writes in window {} acknowledged, {} failed, {lost} lost (of {acked} acknowledged so far)",
                acked - self.acked,
                failed - self.failed,
            ),
            format!(
                "device reconnects {}, error answers {}, request timeouts {}",
                totals.0 - self.totals.0,
                totals.1 - self.totals.1,
                totals.2 - self.totals.2,
            ),
        )
    }
}

/// `converged` as a report says it: `in 1.2s` or `NOT within 30s`.
pub fn converged_in(converged: &Result<Duration, Vec<String>>, limit: Duration) -> String {
    match converged {
        Ok(d) => format!("in {:.1}s", d.as_secs_f64()),
        Err(_) => format!("NOT within {limit:?}"),
    }
}

/// Fails the test named `test` with `failures`, keeping the services' logs (the
/// temporary directory `dir`, which is not deleted) for whoever investigates.
pub fn fail_keeping_logs(test: &str, dir: Option<tempfile::TempDir>, failures: &[String]) -> ! {
    let kept = dir.map(tempfile::TempDir::keep).unwrap_or_default();
    panic!(
        "{test} failed (the services' logs are kept in {}):\n{}",
        kept.display(),
        failures.join("\n")
    );
}
