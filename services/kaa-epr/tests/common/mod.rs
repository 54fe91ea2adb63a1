//! The register on an in-memory or NATS bus with its REST API on an ephemeral
//! port and two bearer tokens, shared by the test binaries `epr` and `metadata`.
#![allow(dead_code)]

use std::sync::Arc;

use kaa_bus::Bus;
use kaa_epr::EprServer;
use kaa_epr::config::EprConfig;
use kaa_service::auth::{Access, Authenticator};
use serde_json::Value;

pub(crate) const RW: &str = "rw-secret-token";
pub(crate) const RO: &str = "ro-secret-token";

pub(crate) struct Harness {
    pub(crate) base: String,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) client: reqwest::Client,
    pub(crate) instance: String,
    _dir: tempfile::TempDir,
    _server: tokio::task::JoinHandle<()>,
}

pub(crate) async fn start(bus: Arc<dyn Bus>, instance: &str, apps: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "service:\n  instance:\n    name: {instance}\n{apps}epr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: sqlite://{}\nauth:\n  enabled: false\n",
        dir.path().join("epr.db").display()
    );
    let config: EprConfig = kaa_service::parse_yaml(&yaml, "test").unwrap();
    let auth = Authenticator::with_tokens([
        ("admin".to_owned(), RW.to_owned(), Access::ReadWrite),
        ("viewer".to_owned(), RO.to_owned(), Access::Read),
    ]);
    let server = EprServer::bind_with_auth(&config, Arc::clone(&bus), auth)
        .await
        .unwrap();
    let base = format!("http://{}/api/v1", server.local_addr());
    let handle = tokio::spawn(async move {
        let _ = server.run(std::future::pending()).await;
    });
    Harness {
        base,
        bus,
        client: reqwest::Client::new(),
        instance: instance.to_owned(),
        _dir: dir,
        _server: handle,
    }
}

impl Harness {
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(RW), Some(body))
            .await
    }
}
