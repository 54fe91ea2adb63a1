//! Test harness: a CMX engine, the fake configuration provider of
//! `kaa_cmp::test_support`, and helpers that play the communication service and
//! the event originators, all on simulated time.
#![allow(dead_code, unreachable_pub)]

use std::borrow::Cow;
use std::collections::VecDeque;

use kaa_cmp::engine::{
    Cmx, CmxConfig, OutgoingConfigApplied, OutgoingConfigRequest, OutgoingExtensionData,
    OutgoingSessionsRequest, Output,
};
use kaa_cmp::test_support::FakeProvider;
use kaa_elce::{AppVersionUpdatedEvent, ConnectedEvent, DisconnectedEvent, UnregisteredEvent};
use kaa_esp::ClientData;
use kaa_ism::UnixMillis;

pub const AV: &str = "kettle-v1";
pub const AV2: &str = "kettle-v2";
pub const KPC_REPLICA: &str = "kaa.v1.replica.kpc-1.esp.ExtensionData";
pub const KPC_INSTANCE: &str = "kaa.v1.service.kpc.esp.ExtensionData";

/// The engine with its surroundings.
pub struct World {
    pub cmx: Cmx,
    pub now: UnixMillis,
    pub provider: FakeProvider,
    /// Hand CDTP requests to the provider as soon as they are published (it
    /// answers at once unless told to delay).
    pub auto_answer: bool,
    /// CDTP requests published and not yet answered (when `auto_answer` is off).
    pub held: VecDeque<OutgoingConfigRequest>,
    /// Every `ExtensionData` published, in order.
    pub sent: Vec<OutgoingExtensionData>,
    /// Every `ConfigApplied` published, in order.
    pub applied: Vec<OutgoingConfigApplied>,
    /// Every CDTP request published, in order.
    pub requests: Vec<OutgoingConfigRequest>,
    /// Every sessions request published, in order.
    pub sessions_requests: Vec<OutgoingSessionsRequest>,
    next_correlation: u64,
}

pub fn config() -> CmxConfig {
    CmxConfig::new("cmx", "cmx-1", "ecr", "kpc")
}

impl World {
    pub fn new() -> Self {
        Self::with(config())
    }

    pub fn with(config: CmxConfig) -> Self {
        World {
            cmx: Cmx::new(config).unwrap(),
            now: UnixMillis(1_000_000),
            provider: FakeProvider::new(),
            auto_answer: true,
            held: VecDeque::new(),
            sent: Vec::new(),
            applied: Vec::new(),
            requests: Vec::new(),
            sessions_requests: Vec::new(),
            next_correlation: 0,
        }
    }

    /// Drains the engine; with `auto_answer`, lets the provider answer until
    /// nothing is left (answers it holds back come when they are due).
    pub fn drain(&mut self) {
        loop {
            let mut answered = false;
            while let Some(out) = self.cmx.poll_output() {
                match out {
                    Output::ExtensionData(m) => self.sent.push(m),
                    Output::ConfigApplied(m) => self.applied.push(m),
                    Output::ConfigRequest(m) => {
                        self.requests.push(m.clone());
                        self.held.push_back(m);
                    }
                    Output::SessionsRequest(m) => self.sessions_requests.push(m),
                    other => panic!("unexpected output {other:?}"),
                }
            }
            if self.auto_answer {
                while let Some(req) = self.held.pop_front() {
                    self.provider.receive(&req.message(), self.now);
                }
            }
            while let Some(resp) = self.provider.poll_answer(self.now) {
                self.cmx.handle_config_response(&resp, self.now);
                answered = true;
            }
            if !answered {
                break;
            }
        }
    }

    /// Answers the oldest held CDTP request now, from the provider's current state.
    pub fn answer_next(&mut self) {
        let req = self.held.pop_front().expect("a held CDTP request");
        let resp = self.provider.answer(&req.message(), self.now);
        self.cmx.handle_config_response(&resp, self.now);
        self.drain();
    }

    pub fn client_data(
        &mut self,
        ep: &str,
        path: &str,
        request_id: Option<i32>,
        payload: &str,
    ) -> ClientData<'static> {
        self.next_correlation += 1;
        ClientData {
            correlation_id: format!("kpc-{}", self.next_correlation).into(),
            timestamp: self.now.0,
            timeout: 0,
            app_version_name: AV.into(),
            endpoint_id: Some(ep.to_owned().into()),
            resource_path: path.to_owned().into(),
            request_id,
            payload: Cow::Owned(payload.as_bytes().to_vec()),
            config_name: None,
        }
    }

    /// A device message through the communication service replica `kpc-1`.
    pub fn send(&mut self, ep: &str, path: &str, request_id: Option<i32>, payload: &str) {
        let cd = self.client_data(ep, path, request_id, payload);
        self.cmx
            .handle_client_data(&cd, Some(KPC_REPLICA), self.now);
        self.drain();
    }

    pub fn send_msg(&mut self, cd: &ClientData<'_>, reply_to: Option<&str>) {
        self.cmx.handle_client_data(cd, reply_to, self.now);
        self.drain();
    }

    pub fn update(&mut self, ep: &str, name: Option<&str>, json: &str) -> String {
        self.update_av(ep, AV, name, json)
    }

    pub fn update_av(&mut self, ep: &str, av: &str, name: Option<&str>, json: &str) -> String {
        let u = self.provider.set(ep, av, name, json);
        let id = u.config_id.to_string();
        self.cmx.handle_config_updated(&u, self.now);
        self.drain();
        id
    }

    pub fn connect(&mut self, eps: &[&str]) {
        self.connect_av(eps, AV);
    }

    pub fn connect_av(&mut self, eps: &[&str], av: &str) {
        let e = ConnectedEvent {
            correlation_id: "conn".into(),
            timestamp: self.now.0,
            timeout: 0,
            endpoints: eps
                .iter()
                .map(|e| (Cow::Owned(e.to_string()), Cow::Owned(av.to_string())))
                .collect(),
            originator_replica_id: "kpc-1".into(),
        };
        self.cmx.handle_connected(&e, self.now);
        self.drain();
    }

    pub fn disconnect(&mut self, eps: &[&str]) {
        let e = DisconnectedEvent {
            correlation_id: "disc".into(),
            timestamp: self.now.0,
            timeout: 0,
            endpoints: eps
                .iter()
                .map(|e| (Cow::Owned(e.to_string()), Cow::Owned(AV.to_string())))
                .collect(),
            originator_replica_id: "kpc-1".into(),
        };
        self.cmx.handle_disconnected(&e, self.now);
        self.drain();
    }

    pub fn app_version_updated(&mut self, ep: &str, from: &str, to: &str) {
        let e = AppVersionUpdatedEvent {
            correlation_id: "avu".into(),
            timestamp: self.now.0,
            timeout: 0,
            app_version_name: to.to_owned().into(),
            previous_app_version_name: from.to_owned().into(),
            endpoint_id: ep.to_owned().into(),
            originator_replica_id: "epr-1".into(),
        };
        self.cmx.handle_app_version_updated(&e, self.now);
        self.drain();
    }

    pub fn unregister(&mut self, ep: &str) {
        let e = UnregisteredEvent {
            correlation_id: "unreg".into(),
            timestamp: self.now.0,
            timeout: 0,
            app_version_name: AV.into(),
            endpoint_id: ep.to_owned().into(),
            originator_replica_id: "epr-1".into(),
        };
        self.cmx.handle_unregistered(&e, self.now);
        self.drain();
    }

    pub fn advance(&mut self, ms: i64) {
        self.now = UnixMillis(self.now.0 + ms);
        self.cmx.handle_timeout(self.now);
        self.drain();
    }

    /// Takes everything sent to `ep` so far.
    pub fn take(&mut self, ep: &str) -> Vec<OutgoingExtensionData> {
        let (mine, rest) = std::mem::take(&mut self.sent)
            .into_iter()
            .partition(|m| m.endpoint_id.as_deref() == Some(ep));
        self.sent = rest;
        mine
    }

    /// Takes the one message sent to `ep`.
    pub fn take_one(&mut self, ep: &str) -> OutgoingExtensionData {
        let mut all = self.take(ep);
        assert_eq!(all.len(), 1, "expected one message to {ep}, got {all:#?}");
        all.remove(0)
    }
}

/// The JSON payload of an `ExtensionData`.
pub fn json(m: &OutgoingExtensionData) -> serde_json::Value {
    serde_json::from_slice(m.payload.as_deref().expect("a payload")).expect("JSON payload")
}

/// The `configId` of a configuration response (`None` for `{}`).
pub fn config_id(m: &OutgoingExtensionData) -> Option<String> {
    json(m)
        .get("configId")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}
