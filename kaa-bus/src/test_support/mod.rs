//! Support for tests that need a live service (feature `test-support`).
//!
//! Enable it from another crate's dev-dependencies:
//!
//! ```toml
//! [dev-dependencies]
//! kaa-bus = { workspace = true, features = ["test-support"] }
//! ```
//!
//! ## The rule for tests that need a live service
//!
//! A test that needs NATS (or PostgreSQL, or an MQTT server) first checks that the
//! service is reachable ([`LiveService::require`]). When it is not, the test prints
//! a visible line to stderr and returns, passing:
//!
//! ```text
//! SKIPPED: <test>: NATS not reachable at nats://127.0.0.1:4222
//! ```
//!
//! unless the environment variable `KAA_REQUIRE_SERVICES` is `1` (CI sets it), in
//! which case the test fails instead. The line is written straight to the process's
//! stderr, so it shows even though the test harness captures test output.
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `KAA_REQUIRE_SERVICES` | `1` (or `true`/`yes`): an unreachable service fails the test | unset |
//! | `KAA_TEST_NATS_URL` | NATS for tests | `nats://127.0.0.1:4222` |
//! | `KAA_TEST_POSTGRES_URL` | PostgreSQL for tests | `postgres://postgres@127.0.0.1:5432/test` |
//! | `KAA_TEST_MQTT_URL` | an MQTT server for tests | `mqtt://127.0.0.1:1883` |
//! | `KAA_TEST_NATS_SERVER` | the `nats-server` binary [`PrivateNatsServer`] and [`PrivateNatsCluster`] run | `/usr/sbin/nats-server`, else `nats-server` on `PATH` |
//!
//! ```no_run
//! use kaa_bus::test_support::NATS;
//!
//! # async fn test() {
//! let Some(url) = NATS.require("my_crate::talks_to_nats") else {
//!     return; // skipped visibly, or failed under KAA_REQUIRE_SERVICES=1
//! };
//! // ... connect to `url` ...
//! # }
//! ```
//!
//! Fault tests that stop and restart a server use their own [`PrivateNatsServer`]
//! on an ephemeral port, never the machine's shared one. Tests of replicas and
//! fail-over on a NATS cluster run a [`PrivateNatsCluster`]: three `nats-server`s with
//! JetStream, routed to each other on loopback ephemeral ports, any node of which can
//! be killed and restarted.
//!
//! The [`conformance`] module holds the suite every [`Bus`](crate::Bus)
//! implementation must pass.

use std::{
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

mod cluster;
pub mod conformance;

pub use cluster::{CLUSTER_FORM_TIMEOUT, PrivateNatsCluster};

/// `KAA_REQUIRE_SERVICES`: when `1`, a test whose live service is unreachable fails
/// instead of skipping.
pub const ENV_REQUIRE_SERVICES: &str = "KAA_REQUIRE_SERVICES";
/// `KAA_TEST_NATS_SERVER`: the `nats-server` binary for [`PrivateNatsServer`].
pub const ENV_NATS_SERVER_BINARY: &str = "KAA_TEST_NATS_SERVER";
/// Where [`PrivateNatsServer`] looks for `nats-server` first.
pub const DEFAULT_NATS_SERVER_BINARY: &str = "/usr/sbin/nats-server";

/// A live service tests may need: its name, the environment variable with its URL,
/// and the URL used when that variable is unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveService {
    /// The name in `SKIPPED:` lines, e.g. `NATS`.
    pub name: &'static str,
    /// The environment variable holding the service URL.
    pub url_env: &'static str,
    /// The URL when `url_env` is unset or empty.
    pub default_url: &'static str,
}

/// NATS: `KAA_TEST_NATS_URL`, default `nats://127.0.0.1:4222`.
pub const NATS: LiveService = LiveService {
    name: "NATS",
    url_env: "KAA_TEST_NATS_URL",
    default_url: "nats://127.0.0.1:4222",
};

/// PostgreSQL: `KAA_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`.
pub const POSTGRES: LiveService = LiveService {
    name: "PostgreSQL",
    url_env: "KAA_TEST_POSTGRES_URL",
    default_url: "postgres://postgres@127.0.0.1:5432/test",
};

/// An MQTT server: `KAA_TEST_MQTT_URL`, default `mqtt://127.0.0.1:1883`.
pub const MQTT: LiveService = LiveService {
    name: "MQTT",
    url_env: "KAA_TEST_MQTT_URL",
    default_url: "mqtt://127.0.0.1:1883",
};

impl LiveService {
    /// The service URL: the environment variable if set and non-empty, else the
    /// default.
    pub fn url(&self) -> String {
        std::env::var(self.url_env)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| self.default_url.to_owned())
    }

    /// Returns the service URL if a TCP connection to it succeeds (within 2 s).
    ///
    /// Otherwise prints `SKIPPED: <test>: <name> not reachable at <url>` to stderr
    /// and returns `None`, or, under `KAA_REQUIRE_SERVICES=1`, panics (failing the
    /// test).
    #[track_caller]
    pub fn require(&self, test: &str) -> Option<String> {
        let url = self.url();
        if is_reachable(&url, Duration::from_secs(2)) {
            Some(url)
        } else {
            skip(test, &format!("{} not reachable at {url}", self.name));
            None
        }
    }
}

/// True when `KAA_REQUIRE_SERVICES` is `1`, `true` or `yes`.
pub fn services_required() -> bool {
    std::env::var(ENV_REQUIRE_SERVICES)
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
        .unwrap_or(false)
}

/// Skips the test visibly: prints `SKIPPED: <test>: <reason>` straight to the
/// process's stderr (past the harness's output capture). Under
/// `KAA_REQUIRE_SERVICES=1` it panics instead, so the test fails.
///
/// The caller returns from the test right after.
#[track_caller]
pub fn skip(test: &str, reason: &str) {
    if services_required() {
        panic!("{test}: {reason} (and {ENV_REQUIRE_SERVICES}=1 makes it mandatory)");
    }
    let line = format!("SKIPPED: {test}: {reason}\n");
    let mut stderr = std::io::stderr().lock();
    // Nothing sensible to do if stderr itself is gone.
    let _ = stderr.write_all(line.as_bytes());
    let _ = stderr.flush();
}

/// The `host:port` of a URL such as `nats://user:pw@host:4222/path` (scheme,
/// credentials and path are ignored; a bare `host:port` works too).
///
/// ```
/// use kaa_bus::test_support::host_port;
/// assert_eq!(host_port("nats://127.0.0.1:4222").as_deref(), Some("127.0.0.1:4222"));
/// assert_eq!(host_port("postgres://postgres@localhost:5432/test").as_deref(), Some("localhost:5432"));
/// assert_eq!(host_port("127.0.0.1:1883").as_deref(), Some("127.0.0.1:1883"));
/// assert_eq!(host_port("nats://"), None);
/// ```
pub fn host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, hp)| hp)
        .trim();
    (!host_port.is_empty()).then(|| host_port.to_owned())
}

/// True when a TCP connection to the URL's `host:port` succeeds within `timeout`.
pub fn is_reachable(url: &str, timeout: Duration) -> bool {
    let Some(host_port) = host_port(url) else {
        return false;
    };
    let Ok(addrs) = host_port.to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|addr| TcpStream::connect_timeout(&addr, timeout).is_ok())
}

/// A free TCP port on 127.0.0.1: binds port 0 and releases it at once.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A `nats-server` of the test's own, on 127.0.0.1 and an ephemeral port, with its
/// log in a temporary directory. Killed (and the directory removed) on drop.
///
/// For fault tests that stop and restart the server; never touches the machine's
/// shared NATS on 4222.
#[derive(Debug)]
pub struct PrivateNatsServer {
    binary: PathBuf,
    args: Vec<String>,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl PrivateNatsServer {
    /// The `nats-server` binary: `KAA_TEST_NATS_SERVER`, else
    /// `/usr/sbin/nats-server`, else `nats-server` on `PATH`; `None` if none exists.
    pub fn binary() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os(ENV_NATS_SERVER_BINARY).filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(path)).filter(|p| p.is_file());
        }
        let default = Path::new(DEFAULT_NATS_SERVER_BINARY);
        if default.is_file() {
            return Some(default.to_owned());
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nats-server"))
                .find(|p| p.is_file())
        })
    }

    /// Starts a private server for `test` on a free port, or skips visibly (same rule
    /// as [`LiveService::require`]) when no `nats-server` binary exists or it does
    /// not start.
    #[track_caller]
    pub fn start(test: &str) -> Option<Self> {
        PrivateNatsServer::start_with_args(test, &[])
    }

    /// Like [`PrivateNatsServer::start`], with extra `nats-server` arguments (e.g.
    /// `["--user", "u", "--pass", "p"]`), kept across restarts.
    #[track_caller]
    pub fn start_with_args(test: &str, args: &[&str]) -> Option<Self> {
        let Some(binary) = PrivateNatsServer::binary() else {
            skip(
                test,
                &format!(
                    "nats-server binary not found ({ENV_NATS_SERVER_BINARY}, {DEFAULT_NATS_SERVER_BINARY}, PATH)"
                ),
            );
            return None;
        };
        match PrivateNatsServer::launch(binary, args) {
            Ok(server) => Some(server),
            Err(e) => {
                skip(test, &format!("private nats-server did not start: {e}"));
                None
            }
        }
    }

    /// Starts `binary` with `args` on a free port in a fresh temporary directory.
    pub fn launch(binary: PathBuf, args: &[&str]) -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "kaa-bus-nats-{}-{}-{port}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let mut server = PrivateNatsServer {
            binary,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            port,
            dir,
            child: None,
            starts: 0,
        };
        server.restart()?;
        Ok(server)
    }

    /// The port the server listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's temporary directory (it holds `nats-server-<n>.log`, one per start).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's process ID while it runs (e.g. to send it SIGTERM for a
    /// graceful stop).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the server process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (killing it first if it runs) and
    /// waits until it accepts connections (at most 10 s).
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.starts += 1;
            let log =
                std::fs::File::create(self.dir.join(format!("nats-server-{}.log", self.starts)))?;
            let mut child = Command::new(&self.binary)
                .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
                .args(&self.args)
                .current_dir(&self.dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            // Wait until it listens, or exits (e.g. the port is still taken).
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    self.child = Some(child);
                    return Ok(());
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("nats-server did not listen on {addr} within 10 s"),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "nats-server exited at start on {addr}; see {}",
                        self.dir.display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PrivateNatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(host_port("nats://a:1").as_deref(), Some("a:1"));
        assert_eq!(host_port("nats://u:p@a:1").as_deref(), Some("a:1"));
        assert_eq!(
            host_port("mqtt://[::1]:1883").as_deref(),
            Some("[::1]:1883")
        );
        assert_eq!(host_port("a:1/x?y").as_deref(), Some("a:1"));
        assert_eq!(host_port(""), None);
    }

    #[test]
    fn unreachable_port_is_unreachable() {
        // Bind a port and close it: nothing listens there now.
        let port = free_port().unwrap();
        assert!(!is_reachable(
            &format!("nats://127.0.0.1:{port}"),
            Duration::from_millis(200)
        ));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(is_reachable(
            &format!("nats://127.0.0.1:{port}"),
            Duration::from_millis(200)
        ));
    }
}
