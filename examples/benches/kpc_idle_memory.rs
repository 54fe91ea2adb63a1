//! Memory per idle MQTT session: the `kpc` binary against a private Mosquitto, measured
//! in the same run on the same machine (issue #15, "Fleet scale").
//!
//! For each server in turn (Mosquitto first, then KPC), the bench starts it on a free
//! loopback port, reads its resident set size (`VmRSS` in `/proc/<pid>/status`) after
//! a settle, opens N MQTT 3.1.1 connections that only CONNECT (clean session, no
//! credentials, keep-alive 600 s, a unique client ID each) and wait for a CONNACK 0x00,
//! keeps them open and idle, reads `VmRSS` again after a settle, closes them and stops
//! the server. It prints the RSS before and after, the growth per connection, and
//! KPC's growth per connection over Mosquitto's.
//!
//! ```sh
//! cargo bench -p kaa-examples --bench kpc_idle_memory           # 5,000 connections each
//! KPC_MEM_CONNECTIONS=10000 cargo bench -p kaa-examples --bench kpc_idle_memory
//! # knobs: KPC_MEM_CONNECTIONS (default 5000), KPC_MEM_SETTLE_MS (default 2000),
//! #        KPC_MEM_MOSQUITTO (default /usr/sbin/mosquitto; "" skips it),
//! #        KPC_MEM_BIN (a `kpc` binary to measure instead of building this tree's,
//! #        e.g. a copy of an earlier build, for before/after comparisons)
//! ```
//!
//! KPC is the example binary (`kaa-example-kpc`, built in release by
//! [`kaa_testkit::service_binary`]) on the in-memory bus with authentication off (the
//! memory of a session, not of a password check), `max-connections` N + 100; Mosquitto
//! runs with a minimal configuration of its own (one loopback listener, anonymous
//! clients, no persistence). Neither touches a shared broker. Connections are opened
//! 64 at a time, within KPC's default handshake budgets. Linux only (`/proc`); this
//! process holds N sockets at a time and each server N, so N must stay below the
//! open-file limit (`ulimit -n`) with some room.
#![allow(missing_docs)]

use std::io::BufRead;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use kaa_testkit::mini_mqtt::{connect_packet, read_packet};

/// Connections in their handshake at once (KPC's default per-address budget is 256).
const CONCURRENCY: usize = 64;
/// Every connection's CONNECT must be answered within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

/// A free loopback port (bound then released; the server binds it next).
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `VmRSS` of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

/// A server process that is killed (and reaped) when dropped.
struct Server {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `addr` accepts TCP connections.
async fn wait_listening(addr: SocketAddr) {
    let start = Instant::now();
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nothing listens on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_mosquitto(bin: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_connections -1\nlog_dest none\n"
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e}"));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = Server {
        name: "mosquitto",
        child,
        addr,
        _dir: dir,
    };
    wait_listening(addr).await;
    server
}

async fn start_kpc(connections: usize) -> Server {
    let bin = std::env::var_os("KPC_MEM_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| kaa_testkit::service_binary("kpc"));
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("kpc.yaml");
    std::fs::write(
        &conf,
        format!(
            "kpc:\n  mqtt:\n    listen: 127.0.0.1:0\n    max-connections: {}\n",
            connections + 100
        ),
    )
    .unwrap();
    let mut child = Command::new(&bin)
        .arg(&conf)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let stdout = child.stdout.take().unwrap();
    let mut first = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut first)
        .expect("kpc's first line");
    let addr = first
        .trim()
        .strip_prefix("kpc listening on mqtt://")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .parse()
        .unwrap();
    Server {
        name: "kpc",
        child,
        addr,
        _dir: dir,
    }
}

/// One idle connection: CONNECT, CONNACK 0x00, then the socket is kept as it is.
async fn connect_idle(addr: SocketAddr, client_id: String) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("TCP connect");
    stream
        .write_all(&connect_packet(&client_id, 600))
        .await
        .expect("CONNECT sent");
    let mut r = BufReader::with_capacity(64, &mut stream);
    let (first, body) = read_packet(&mut r).await.expect("CONNACK");
    assert_eq!(
        first, 0x20,
        "{client_id}: expected CONNACK, got {first:#04x}"
    );
    assert_eq!(body.get(1), Some(&0), "{client_id}: CONNACK {body:?}");
    stream
}

/// Opens `n` idle connections to `addr`, `CONCURRENCY` handshakes at a time.
async fn open_idle(addr: SocketAddr, n: usize, tag: &str) -> Vec<TcpStream> {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let id = format!("mem-{tag}-{i}");
        tasks.push(tokio::spawn(async move {
            let s = tokio::time::timeout(CONNECT_TIMEOUT, connect_idle(addr, id))
                .await
                .expect("CONNACK in time");
            drop(permit);
            s
        }));
    }
    let mut streams = Vec::with_capacity(n);
    for t in tasks {
        streams.push(t.await.expect("connection task"));
    }
    streams
}

struct Row {
    name: &'static str,
    connections: usize,
    before: u64,
    after: u64,
}

impl Row {
    fn per_connection(&self) -> f64 {
        (self.after as f64 - self.before as f64) / self.connections as f64
    }
}

async fn measure(server: Server, n: usize, settle: Duration) -> Row {
    let pid = server.child.id();
    tokio::time::sleep(settle).await;
    let before = rss(pid);
    let start = Instant::now();
    let streams = open_idle(server.addr, n, server.name).await;
    let opened = start.elapsed();
    tokio::time::sleep(settle).await;
    let after = rss(pid);
    eprintln!(
        "{}: {n} connections open in {:.1} s",
        server.name,
        opened.as_secs_f64()
    );
    drop(streams);
    let row = Row {
        name: server.name,
        connections: n,
        before,
        after,
    };
    drop(server);
    row
}

fn kib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n = env_usize("KPC_MEM_CONNECTIONS", 5_000);
    let settle = Duration::from_millis(env_usize("KPC_MEM_SETTLE_MS", 2_000) as u64);
    let mosquitto =
        std::env::var("KPC_MEM_MOSQUITTO").unwrap_or_else(|_| "/usr/sbin/mosquitto".into());

    let mut rows = Vec::new();
    if !mosquitto.is_empty() {
        let server = start_mosquitto(&mosquitto).await;
        rows.push(measure(server, n, settle).await);
    }
    let server = start_kpc(n).await;
    rows.push(measure(server, n, settle).await);

    println!();
    println!(
        "{:<10} {:>11} {:>12} {:>12} {:>14}",
        "server", "connections", "RSS before", "RSS after", "B/connection"
    );
    for r in &rows {
        println!(
            "{:<10} {:>11} {:>12} {:>12} {:>14.0}",
            r.name,
            r.connections,
            kib(r.before),
            kib(r.after),
            r.per_connection()
        );
    }
    if let [m, k] = &rows[..] {
        println!(
            "KPC / Mosquitto per connection: {:.1}x",
            k.per_connection() / m.per_connection()
        );
    }
}
