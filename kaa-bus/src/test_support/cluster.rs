//! A private NATS cluster with JetStream for tests: [`PrivateNatsCluster`].

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use super::{ENV_NATS_SERVER_BINARY, PrivateNatsServer, free_port, skip};

/// One node of a [`PrivateNatsCluster`].
#[derive(Debug)]
struct Node {
    name: String,
    client_port: u16,
    cluster_port: u16,
    http_port: u16,
    child: Option<Child>,
    starts: u32,
}

/// A cluster of `nats-server`s of the test's own, with JetStream: every node on
/// 127.0.0.1 with three ephemeral ports (clients, routes, HTTP monitoring), its own
/// JetStream store directory, and routes to every other node. Killed (and its
/// directory removed) on drop.
///
/// For tests of what replicas of a service do on a cluster, and of fail-over: kill a
/// node with SIGKILL ([`PrivateNatsCluster::kill`]), start it again on the same ports
/// and store ([`PrivateNatsCluster::restart`]). It never touches the machine's shared
/// NATS.
///
/// A node is started as
///
/// ```text
/// nats-server -a 127.0.0.1 -p <client> -m <http> --server_name n<i>
///     --cluster nats://127.0.0.1:<route> --cluster_name <name>
///     --routes nats://127.0.0.1:<route of n0>,… -js --sd <dir>/n<i>
/// ```
///
/// (the list of routes names every node, itself included; nats-server skips its own).
/// [`PrivateNatsCluster::start`] returns once the cluster has formed: every running
/// node has a route to every other running one (monitoring endpoint `/routez`) and
/// JetStream has a metadata leader (`/jsz`).
///
/// ```no_run
/// use kaa_bus::test_support::PrivateNatsCluster;
///
/// let Some(mut cluster) = PrivateNatsCluster::start("my_crate::fail_over") else {
///     return; // skipped visibly (no nats-server), or failed under KAA_REQUIRE_SERVICES=1
/// };
/// let urls = cluster.urls(); // give a client all of them
/// cluster.kill(0); // SIGKILL the first node
/// cluster.restart(0).unwrap(); // same ports, same JetStream store
/// ```
#[derive(Debug)]
pub struct PrivateNatsCluster {
    binary: PathBuf,
    cluster_name: String,
    dir: PathBuf,
    nodes: Vec<Node>,
}

/// How long [`PrivateNatsCluster::start`] and [`PrivateNatsCluster::restart`] wait for
/// the cluster to form.
pub const CLUSTER_FORM_TIMEOUT: Duration = Duration::from_secs(20);

impl PrivateNatsCluster {
    /// The number of nodes [`PrivateNatsCluster::start`] runs.
    pub const DEFAULT_SIZE: usize = 3;

    /// Starts a private cluster of [`PrivateNatsCluster::DEFAULT_SIZE`] nodes for
    /// `test`, or skips visibly (same rule as [`super::LiveService::require`]) when
    /// no `nats-server` binary exists or the cluster does not form.
    #[track_caller]
    pub fn start(test: &str) -> Option<Self> {
        PrivateNatsCluster::start_nodes(test, PrivateNatsCluster::DEFAULT_SIZE)
    }

    /// Like [`PrivateNatsCluster::start`] with `nodes` nodes (at least 1).
    #[track_caller]
    pub fn start_nodes(test: &str, nodes: usize) -> Option<Self> {
        let Some(binary) = PrivateNatsServer::binary() else {
            skip(
                test,
                &format!(
                    "nats-server binary not found ({ENV_NATS_SERVER_BINARY}, {}, PATH)",
                    super::DEFAULT_NATS_SERVER_BINARY
                ),
            );
            return None;
        };
        match PrivateNatsCluster::launch(binary, nodes) {
            Ok(cluster) => Some(cluster),
            Err(e) => {
                skip(test, &format!("private NATS cluster did not form: {e}"));
                None
            }
        }
    }

    /// Starts `nodes` nodes of `binary` in a fresh temporary directory and waits
    /// until the cluster has formed (at most [`CLUSTER_FORM_TIMEOUT`]).
    pub fn launch(binary: PathBuf, nodes: usize) -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "kaa-bus-nats-cluster-{}-{n}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = PrivateNatsCluster {
            binary,
            cluster_name: format!("kaa-test-{}-{n}", std::process::id()),
            dir,
            nodes: Vec::new(),
        };
        for i in 0..nodes.max(1) {
            cluster.nodes.push(Node {
                name: format!("n{i}"),
                client_port: free_port()?,
                cluster_port: free_port()?,
                http_port: free_port()?,
                child: None,
                starts: 0,
            });
        }
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i)?;
        }
        cluster.wait_formed(CLUSTER_FORM_TIMEOUT)?;
        Ok(cluster)
    }

    /// The number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The cluster name (`--cluster_name`).
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// The client URL of every node, `nats://127.0.0.1:<port>`, in node order: what a
    /// service's `nats.urls` lists.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// The client URL of node `i`.
    ///
    /// # Panics
    ///
    /// When there is no node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// The client port of node `i`.
    pub fn client_port(&self, i: usize) -> u16 {
        self.nodes[i].client_port
    }

    /// The server name of node `i` (`n<i>`), as a client's server info reports it.
    pub fn server_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The node whose server name (`n<i>`) or client port this is, e.g. from the
    /// server info of a connected client.
    pub fn node_named(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == server_name)
    }

    /// The node listening for clients on `port`.
    pub fn node_with_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.client_port == port)
    }

    /// The HTTP monitoring URL of node `i` (`http://127.0.0.1:<port>`).
    pub fn monitor_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].http_port)
    }

    /// The cluster's temporary directory: `n<i>/` holds node `i`'s JetStream store,
    /// `n<i>-<start>.log` its log of each start.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process ID of node `i` while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// True while node `i` runs.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i]
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills node `i` (SIGKILL: no goodbye to clients or routes) and waits until it
    /// is gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on the same ports and store directory (killing it first
    /// if it runs) and waits until the cluster has formed again.
    pub fn restart(&mut self, i: usize) -> std::io::Result<()> {
        self.kill(i);
        let deadline = Instant::now() + CLUSTER_FORM_TIMEOUT;
        // The client port of a node killed a moment ago may still be taken: retry.
        loop {
            match self.spawn(i) {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, node = i, "nats-server did not start; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
        self.wait_formed(deadline.saturating_duration_since(Instant::now()))
    }

    /// The tail of node `i`'s latest log (for a failing test's message).
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let node = &self.nodes[i];
        let path = self.dir.join(format!("{}-{}.log", node.name, node.starts));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts node `i`'s process and waits until it accepts client connections.
    fn spawn(&mut self, i: usize) -> std::io::Result<()> {
        let routes = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let store = self.dir.join(&self.nodes[i].name);
        std::fs::create_dir_all(&store)?;
        let node = &mut self.nodes[i];
        node.starts += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("{}-{}.log", node.name, node.starts)))?;
        let mut child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &node.client_port.to_string()])
            .args(["-m", &node.http_port.to_string()])
            .args(["--server_name", &node.name])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", node.cluster_port),
            ])
            .args(["--cluster_name", &self.cluster_name])
            .args(["--routes", &routes])
            .arg("-js")
            .arg("--sd")
            .arg(&store)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], node.client_port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                node.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "nats-server {} exited at start ({status}); see {}",
                        node.name,
                        self.dir.display()
                    ),
                ));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "nats-server {} did not listen on {addr} within 10 s",
                        node.name
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every running node has a route to every other running node and
    /// each sees a JetStream metadata leader, at most `timeout`.
    pub fn wait_formed(&mut self, timeout: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.is_running(i))
                .collect();
            let formed = running.iter().all(|&i| {
                let port = self.nodes[i].http_port;
                let routes =
                    http_get(port, "/routez").and_then(|body| json_number(&body, "num_routes"));
                let leader = http_get(port, "/jsz").and_then(|body| json_string(&body, "leader"));
                routes.is_some_and(|r| r + 1 >= running.len() as u64)
                    && leader.is_some_and(|l| !l.is_empty())
            });
            if formed && !running.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the NATS cluster did not form within {timeout:?}; logs in {}",
                        self.dir.display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateNatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET path` on `127.0.0.1:port` (HTTP/1.0, so the server closes the connection);
/// the body, or `None` on any failure.
fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.")
        .then(|| head.split_whitespace().nth(1) == Some("200"))
        .filter(|ok| *ok)?;
    Some(body.to_owned())
}

/// The first `"key": <number>` in a JSON text (enough for the monitoring endpoints'
/// flat fields; no JSON parser in this crate).
fn json_number(json: &str, key: &str) -> Option<u64> {
    let rest = json_value(json, key)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The first `"key": "<string>"` in a JSON text (no escapes expected).
fn json_string(json: &str, key: &str) -> Option<String> {
    let rest = json_value(json, key)?.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

fn json_value<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let quoted = format!("\"{key}\"");
    let at = json.find(&quoted)? + quoted.len();
    Some(json[at..].trim_start().strip_prefix(':')?.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields() {
        let json = r#"{"num_routes": 2, "meta_cluster": {"name": "kt", "leader": "n0"}}"#;
        assert_eq!(json_number(json, "num_routes"), Some(2));
        assert_eq!(json_string(json, "leader").as_deref(), Some("n0"));
        assert_eq!(json_string(json, "missing"), None);
        assert_eq!(
            json_string(r#"{"leader":""}"#, "leader").as_deref(),
            Some("")
        );
    }
}
