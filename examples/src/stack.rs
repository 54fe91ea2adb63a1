//! The whole system in one process: ECR + CMX + KPC + the endpoint register (EPR)
//! on one in-memory bus, with the embedded SQLite stores. This is what the `kaa-stack` binary runs and what the
//! end-to-end tests start.
//!
//! The three services are the same modules the separate binaries run; only the bus
//! ([`kaa_bus::MemoryBus`]) and the defaults differ. Each service's configuration is
//! built as the YAML its own binary would read, so every option keeps the meaning
//! documented there (`examples/config/*.yaml`).
//!
//! Local-use defaults, all printed on start:
//! - the REST API without authentication (`auth.enabled: false`);
//! - the register's REST API without authentication; KPC validates endpoint tokens
//!   with it over 16/ECAP (`kpc.token-validation`), so a provisioned token
//!   resolves to its endpoint and a revoked or suspended one is refused;
//! - MQTT without a username/password, and **a token the register does not know is
//!   its own endpoint ID** (`kpc.accept-any-token: true` beside the register; see
//!   `kaa_kpc::resolver`, *Development mode with a register*), so any device can
//!   start without provisioning; deploy the separate services without
//!   `accept-any-token`;
//! - any app version name is accepted (no `kaa.applications` list).
//!
//! ```no_run
//! use kaa_examples::stack::{Stack, StackOptions};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let options = StackOptions {
//!     http_listen: "127.0.0.1:0".parse()?,
//!     mqtt_listen: "127.0.0.1:0".parse()?,
//!     store_url: "sqlite://kaa-data/ecr.db".into(),
//!     register_listen: "127.0.0.1:0".parse()?,
//!     register_store_url: "sqlite://kaa-data/epr.db".into(),
//! };
//! let stack = Stack::start(&options).await?;
//! println!("REST on {}, MQTT on {}", stack.http_addr(), stack.mqtt_addr());
//! stack.shutdown().await?;
//! # Ok(()) }
//! ```

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;

use kaa_bus::{Bus, MemoryBus};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cmx::{CmxService, config::CmxServiceConfig};
use crate::ecr::{EcrServer, config::EcrConfig};
use crate::epr::{EprServer, config::EprConfig};
use crate::kpc::{KpcHandle, KpcServer, config::KpcConfig};
use crate::service::{ConfigError, parse_yaml};

/// Where the stack listens and stores.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The REST API (`/api/v1`), `/health` and `/metrics` of ECR.
    pub http_listen: SocketAddr,
    /// The MQTT listener of KPC.
    pub mqtt_listen: SocketAddr,
    /// The ECR store URL (`sqlite://<path>` or `postgres://…`).
    pub store_url: String,
    /// The endpoint register's REST API (`/api/v1/endpoints`, `/api/v1/tokens`).
    pub register_listen: SocketAddr,
    /// The register's store URL (`sqlite://<path>` or `postgres://…`).
    pub register_store_url: String,
}

/// Why the stack could not start or stopped with an error. Each message is one line
/// that names what failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StackError {
    /// A listen address is taken.
    #[error("{what} port {port} is already in use ({addr}); choose another with {option}")]
    PortInUse {
        /// `REST API` or `MQTT`.
        what: &'static str,
        /// The port.
        port: u16,
        /// The whole address.
        addr: SocketAddr,
        /// The command-line option that changes it.
        option: &'static str,
    },
    /// A generated service configuration did not validate (a bad option value).
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// ECR failed to start or stopped with an error.
    #[error("ECR: {0}")]
    Ecr(crate::ecr::StartError),
    /// CMX failed to start or stopped with an error.
    #[error("CMX: {0}")]
    Cmx(String),
    /// KPC failed to start or stopped with an error.
    #[error("KPC: {0}")]
    Kpc(crate::kpc::StartError),
    /// The endpoint register failed to start or stopped with an error.
    #[error("endpoint register: {0}")]
    Epr(crate::epr::StartError),
}

/// A running stack. Dropping it without [`Stack::shutdown`] leaves the tasks running
/// until the runtime stops.
#[derive(Debug)]
pub struct Stack {
    http_addr: SocketAddr,
    mqtt_addr: SocketAddr,
    register_addr: SocketAddr,
    stop: watch::Sender<bool>,
    ecr: JoinHandle<Result<(), crate::ecr::StartError>>,
    epr: JoinHandle<Result<(), crate::epr::StartError>>,
    cmx: JoinHandle<Result<(), String>>,
    kpc: KpcHandle,
    bus: Arc<MemoryBus>,
}

/// The service instance names inside the stack (they are also the NATS names the
/// separate processes use).
pub const ECR_INSTANCE: &str = "ecr";
/// The CMX instance name: the extension instance name devices put in their topics.
pub const CMX_INSTANCE: &str = "cmx";
/// The KPC instance name.
pub const KPC_INSTANCE: &str = "kpc";
/// The endpoint register's instance name (the 16/ECAP provider KPC asks).
pub const EPR_INSTANCE: &str = "epr";

impl Stack {
    /// Starts ECR, CMX, the endpoint register and KPC on one in-memory bus.
    /// Returns once every listener is bound and every subscription is in place.
    pub async fn start(options: &StackOptions) -> Result<Stack, StackError> {
        let memory = Arc::new(MemoryBus::new());
        let bus: Arc<dyn Bus> = memory.clone();
        let (stop, _) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        let ecr_config: EcrConfig = parse_yaml(&ecr_yaml(options), "kaa-stack (ECR)")?;
        let ecr = EcrServer::bind(&ecr_config, Arc::clone(&bus))
            .await
            .map_err(|e| match e {
                crate::ecr::StartError::Http { addr, source }
                    if source.kind() == ErrorKind::AddrInUse =>
                {
                    port_in_use("REST API", addr, "--http-listen")
                }
                e => StackError::Ecr(e),
            })?;
        let http_addr = ecr.local_addr();

        let epr_config: EprConfig = parse_yaml(&epr_yaml(options), "kaa-stack (EPR)")?;
        let epr = EprServer::bind(&epr_config, Arc::clone(&bus))
            .await
            .map_err(|e| match e {
                crate::epr::StartError::Http { addr, source }
                    if source.kind() == ErrorKind::AddrInUse =>
                {
                    port_in_use("register REST API", addr, "--register-listen")
                }
                e => StackError::Epr(e),
            })?;
        let register_addr = epr.local_addr();

        let cmx_config: CmxServiceConfig = parse_yaml(&cmx_yaml(), "kaa-stack (CMX)")?;
        let cmx = CmxService::bind(&cmx_config, Arc::clone(&bus))
            .await
            .map_err(|e| StackError::Cmx(e.to_string()))?;

        let kpc_config: KpcConfig = parse_yaml(&kpc_yaml(options), "kaa-stack (KPC)")?;
        let kpc = KpcServer::bind(&kpc_config, Arc::clone(&bus))
            .await
            .map_err(|e| match e {
                crate::kpc::StartError::Listen { addr, source }
                    if source.kind() == ErrorKind::AddrInUse =>
                {
                    port_in_use("MQTT", addr, "--mqtt-listen")
                }
                e => StackError::Kpc(e),
            })?
            .spawn();
        let mqtt_addr = kpc.local_addr();

        let ecr = tokio::spawn(ecr.run(stopped(stop.subscribe())));
        let epr = tokio::spawn(epr.run(stopped(stop.subscribe())));
        let cmx_stop = stopped(stop.subscribe());
        let cmx =
            tokio::spawn(
                async move { cmx.run(cmx_stop).await.map(drop).map_err(|e| e.to_string()) },
            );
        Ok(Stack {
            http_addr,
            mqtt_addr,
            register_addr,
            stop,
            ecr,
            epr,
            cmx,
            kpc,
            bus: memory,
        })
    }

    /// The bound REST address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound MQTT address.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// The bound address of the endpoint register's REST API.
    pub fn register_addr(&self) -> SocketAddr {
        self.register_addr
    }

    /// The in-memory bus the services share (tests watch it).
    pub fn bus(&self) -> Arc<MemoryBus> {
        Arc::clone(&self.bus)
    }

    /// Stops KPC first (no new device traffic), then CMX (finishing requests in
    /// flight), then ECR and the register.
    pub async fn shutdown(self) -> Result<(), StackError> {
        let kpc = self.kpc.shutdown().await.map_err(StackError::Kpc);
        let _ = self.stop.send(true);
        let cmx = match self.cmx.await {
            Ok(r) => r.map_err(StackError::Cmx),
            Err(e) => Err(StackError::Cmx(e.to_string())),
        };
        let ecr = match self.ecr.await {
            Ok(r) => r.map_err(StackError::Ecr),
            Err(e) => Err(StackError::Cmx(format!("ECR task: {e}"))),
        };
        let epr = match self.epr.await {
            Ok(r) => r.map_err(StackError::Epr),
            Err(e) => Err(StackError::Cmx(format!("register task: {e}"))),
        };
        kpc.and(cmx).and(ecr).and(epr)
    }
}

fn port_in_use(what: &'static str, addr: SocketAddr, option: &'static str) -> StackError {
    StackError::PortInUse {
        what,
        port: addr.port(),
        addr,
        option,
    }
}

/// YAML strings quote every value we interpolate, so a path with `:` or `#` stays
/// one string.
fn quoted(value: &str) -> String {
    serde_json::Value::String(value.to_owned()).to_string()
}

fn ecr_yaml(options: &StackOptions) -> String {
    format!(
        "service:\n  instance:\n    name: {ECR_INSTANCE}\n    replica:\n      id: {ECR_INSTANCE}-1\n\
         ecr:\n  http:\n    listen: {http}\n  store:\n    url: {store}\n  cmx:\n    service-instance-name: {CMX_INSTANCE}\n\
         auth:\n  enabled: false\n",
        http = quoted(&options.http_listen.to_string()),
        store = quoted(&options.store_url),
    )
}

fn epr_yaml(options: &StackOptions) -> String {
    format!(
        "service:\n  instance:\n    name: {EPR_INSTANCE}\n    replica:\n      id: {EPR_INSTANCE}-1\n\
         epr:\n  http:\n    listen: {http}\n  store:\n    url: {store}\n\
         auth:\n  enabled: false\n",
        http = quoted(&options.register_listen.to_string()),
        store = quoted(&options.register_store_url),
    )
}

fn cmx_yaml() -> String {
    format!(
        "service:\n  instance:\n    name: {CMX_INSTANCE}\n    replica:\n      id: {CMX_INSTANCE}-1\n\
         kaa:\n  cmx:\n    configuration-data-provider:\n      service-instance:\n        name: {ECR_INSTANCE}\n\
         \x20   communication-service:\n      service-instance:\n        name: {KPC_INSTANCE}\n\
         cmx:\n  bus: memory\n"
    )
}

fn kpc_yaml(options: &StackOptions) -> String {
    format!(
        "service:\n  instance:\n    name: {KPC_INSTANCE}\n    replica:\n      id: {KPC_INSTANCE}-1\n\
         kpc:\n  mqtt:\n    listen: {mqtt}\n    auth:\n      enabled: false\n\
         \x20 accept-any-token: true\n\
         \x20 token-validation:\n    provider: {EPR_INSTANCE}\n    timeout: 5s\n",
        mqtt = quoted(&options.mqtt_listen.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> StackOptions {
        StackOptions {
            http_listen: "127.0.0.1:0".parse().unwrap(),
            mqtt_listen: "127.0.0.1:0".parse().unwrap(),
            store_url: "sqlite://a dir/with: colon #hash/ecr.db".into(),
            register_listen: "127.0.0.1:0".parse().unwrap(),
            register_store_url: "sqlite://a dir/with: colon #hash/epr.db".into(),
        }
    }

    #[test]
    fn generated_configurations_parse() {
        let o = options();
        let ecr: EcrConfig = parse_yaml(&ecr_yaml(&o), "ecr").unwrap();
        assert_eq!(ecr.ecr.store.url, o.store_url);
        let _: CmxServiceConfig = parse_yaml(&cmx_yaml(), "cmx").unwrap();
        let kpc: KpcConfig = parse_yaml(&kpc_yaml(&o), "kpc").unwrap();
        assert!(kpc.kpc.accept_any_token);
        assert_eq!(
            kpc.kpc.token_validation.as_ref().unwrap().provider,
            EPR_INSTANCE
        );
        kpc.validate().unwrap();
        let epr: EprConfig = parse_yaml(&epr_yaml(&o), "epr").unwrap();
        epr.validate().unwrap();
    }

    #[tokio::test]
    async fn a_taken_port_is_a_one_line_error_naming_the_option() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut o = options();
        o.store_url = format!("sqlite://{}", dir.path().join("ecr.db").display());
        o.register_store_url = format!("sqlite://{}", dir.path().join("epr.db").display());
        o.mqtt_listen = taken.local_addr().unwrap();
        let err = Stack::start(&o).await.unwrap_err().to_string();
        assert!(err.contains("--mqtt-listen"), "{err}");
        assert!(
            err.contains(&taken.local_addr().unwrap().port().to_string()),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");

        o.mqtt_listen = "127.0.0.1:0".parse().unwrap();
        o.http_listen = taken.local_addr().unwrap();
        let err = Stack::start(&o).await.unwrap_err().to_string();
        assert!(err.contains("--http-listen"), "{err}");

        o.http_listen = "127.0.0.1:0".parse().unwrap();
        o.register_listen = taken.local_addr().unwrap();
        let err = Stack::start(&o).await.unwrap_err().to_string();
        assert!(err.contains("--register-listen"), "{err}");
    }
}
