//! The device side of 7/CMP over 1/KP MQTT, sans-IO: what a device or a
//! simulator embeds.
//!
//! [`Device`] builds the topics and payloads of configuration requests and
//! applied reports, tracks request IDs, the current configuration per name and
//! `observe`, reads responses and pushes, and retries requests that get no
//! answer. It does not talk MQTT: received `(topic, payload)` pairs go in through
//! [`Device::handle_publish`]; what to publish comes out of
//! [`Device::poll_publish`] (publish with any QoS; 1/KP answers with the
//! request's QoS); what happened comes out of [`Device::poll_event`].
//!
//! ```
//! use kaa_cmp::device::{Device, DeviceConfig, DeviceEvent};
//! use kaa_ism::UnixMillis;
//!
//! let mut device = Device::new(DeviceConfig::new("smart-kettle-v3", "cmx", "JTjdbENzHh"))?;
//! let now = UnixMillis(0);
//!
//! // Ask for the default configuration and every change to it.
//! let id = device.request_config(None, Some(true), now)?;
//! let publish = device.poll_publish().unwrap();
//! assert_eq!(publish.topic, format!("kp1/smart-kettle-v3/cmx/JTjdbENzHh/config/json/{}", id.get()));
//! assert_eq!(publish.payload, br#"{"observe":true}"#);
//!
//! // The server's answer arrives on the response topic.
//! device.handle_publish(
//!     &format!("{}/status", publish.topic),
//!     br#"{"configId":"c1","config":{"rate":5}}"#,
//!     now,
//! )?;
//! match device.poll_event() {
//!     Some(DeviceEvent::Configuration { config_id, config, .. }) => {
//!         assert_eq!(config_id, "c1");
//!         assert_eq!(config["rate"], 5);
//!     }
//!     other => panic!("{other:?}"),
//! }
//!
//! // The application applied it: say so.
//! device.report_applied(None, "c1", now)?;
//! let report = device.poll_publish().unwrap();
//! assert_eq!(report.topic, "kp1/smart-kettle-v3/cmx/JTjdbENzHh/applied/json");
//! # Ok::<(), kaa_cmp::device::DeviceError>(())
//! ```
//!
//! Names follow [`crate::resource`]: `None` and `Some("default")` are the
//! default configuration, requested on `…/config/json`.
//!
//! # Deltas (kaa-rs extension)
//!
//! With [`DeviceConfig::deltas`] on, the device requests on
//! `…/config/json-patch[/<name>]` ([`crate::delta`]) and, for each name, may
//! watch only parts of the configuration ([`Device::set_pointers`]). It applies
//! the patches it receives and checks the result's config ID
//! ([`crate::canonical`]). A patch from another base than the one it holds (a
//! push it missed) makes it ask again with the config ID it holds; a patch that
//! does not apply or gives another config ID makes it ask for the whole
//! configuration (no `configId`); each is told as a
//! [`DeviceEvent::DeltaRefused`]. A 7/CMP push on `/config/json`, or an answer
//! without a view where it watches parts (or the other way round), comes from a
//! CMX that lost its subscription (a restart, another replica) or that had not
//! seen the device's first request yet (a CMX pushes a newly connected endpoint
//! its configuration on 7/CMP's resource, as Kaa's own clients expect): it asks
//! again on the delta resource. A 4xx answer on the delta resource (a server
//! without the extension answers 404) makes it fall back to plain 7/CMP for that
//! name. Events carry what the application needs either way: the configuration
//! ID (always the whole configuration's, which is what applied reports name)
//! and the document (the view, with pointers).
//!
//! ```
//! use kaa_cmp::canonical::config_id_of;
//! use kaa_cmp::device::{Device, DeviceConfig, DeviceEvent};
//! use kaa_ism::UnixMillis;
//! use serde_json::json;
//!
//! let mut config = DeviceConfig::new("smart-kettle-v3", "cmx", "JTjdbENzHh");
//! config.deltas = true;
//! let mut device = Device::new(config)?;
//! let now = UnixMillis(0);
//! device.request_config(None, Some(true), now)?;
//! let publish = device.poll_publish().unwrap();
//! assert_eq!(publish.topic, "kp1/smart-kettle-v3/cmx/JTjdbENzHh/config/json-patch/1");
//!
//! let (v1, v2) = (json!({"rate": 5, "mode": "AP"}), json!({"rate": 6, "mode": "AP"}));
//! let (id1, id2) = (config_id_of(&v1), config_id_of(&v2));
//! device.handle_publish(&format!("{}/status", publish.topic), format!(r#"{{"configId":"{id1}","config":{v1}}}"#).as_bytes(), now)?;
//! // A push with a patch.
//! device.handle_publish(
//!     "kp1/smart-kettle-v3/cmx/JTjdbENzHh/config/json-patch/status",
//!     format!(r#"{{"configId":"{id2}","baseConfigId":"{id1}","patch":[{{"op":"replace","path":"/rate","value":6}}]}}"#).as_bytes(),
//!     now,
//! )?;
//! assert_eq!(device.configuration(None).unwrap().config, v2);
//! assert_eq!(device.configuration(None).unwrap().config_id, id2);
//! # Ok::<(), kaa_cmp::device::DeviceError>(())
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use kaa_ism::UnixMillis;
use kaa_kp::{ErrorResponse, RequestId, ResponseKind, Topic, TopicError};

use crate::delta::{
    self, CONFIG_JSON_PATCH, DeltaError, DeltaPath, DeltaRequest, DeltaResponse, PointerBuf,
};
use crate::message::{AppliedRequest, ConfigRequest, ConfigResponse, PayloadError};
use crate::resource::{ResourceError, ResourceKind, ResourcePath, canonical_config_name};

/// How a [`Device`] identifies itself and behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceConfig {
    /// The application version name (first level after `kp1`).
    pub app_version: String,
    /// The CMX extension instance name; Kaa's default is `cmx`.
    pub extension_instance: String,
    /// The endpoint token.
    pub endpoint_token: String,
    /// A configuration request without an answer after this long, or answered
    /// with a 5xx, is sent again (with a new request ID). Default 10 s.
    pub request_timeout: Duration,
    /// Report every new configuration applied as soon as it arrives (for
    /// simulators; a real device reports after applying). Default off.
    pub auto_report_applied: bool,
    /// Ask for configuration deltas on `…/config/json-patch[/<name>]` (kaa-rs
    /// extension, [`crate::delta`]). Default off: plain 7/CMP.
    pub deltas: bool,
}

impl DeviceConfig {
    /// A device with the default timeout, reporting nothing by itself.
    pub fn new(
        app_version: impl Into<String>,
        extension_instance: impl Into<String>,
        endpoint_token: impl Into<String>,
    ) -> Self {
        DeviceConfig {
            app_version: app_version.into(),
            extension_instance: extension_instance.into(),
            endpoint_token: endpoint_token.into(),
            request_timeout: Duration::from_secs(10),
            auto_report_applied: false,
            deltas: false,
        }
    }
}

/// An MQTT message for the device to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The 1/KP topic.
    pub topic: String,
    /// The JSON payload.
    pub payload: Vec<u8>,
}

/// A configuration as the device holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configuration {
    /// The opaque configuration ID (`""`: no configuration). With deltas and
    /// pointers, still the whole configuration's ID.
    pub config_id: String,
    /// The configuration body (`null`: no configuration); with deltas and
    /// pointers, the view ([`crate::delta::view`]).
    pub config: serde_json::Value,
}

/// What happened, from [`Device::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceEvent {
    /// A configuration the device did not hold arrived.
    Configuration {
        /// `None`: the default configuration.
        name: Option<String>,
        /// Its ID.
        config_id: String,
        /// Its body.
        config: serde_json::Value,
        /// True for a server push, false for a response.
        pushed: bool,
    },
    /// The server confirmed the configuration the device holds is current.
    Unchanged {
        /// `None`: the default configuration.
        name: Option<String>,
    },
    /// The server answered a request with an error.
    Error {
        /// `None`: the default configuration.
        name: Option<String>,
        /// Which resource the request was for.
        resource: ResourceKind,
        /// The status code (non-2xx).
        status_code: i32,
        /// The reason phrase.
        reason_phrase: String,
        /// True when the request will be sent again (5xx on a configuration
        /// request, or a 4xx on the delta resource, sent again as plain 7/CMP).
        retrying: bool,
    },
    /// A delta answer could not be used; the device asked again (with the
    /// config ID it holds for [`DeltaError::BaseMismatch`], for the whole
    /// configuration otherwise).
    DeltaRefused {
        /// `None`: the default configuration.
        name: Option<String>,
        /// Why.
        error: DeltaError,
    },
}

/// Why a device call or a received message failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// A name is not valid in a topic, or a topic could not be parsed.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// A configuration name or resource path is invalid.
    #[error(transparent)]
    Resource(#[from] ResourceError),
    /// A received payload is not a valid 7/CMP message.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// A received `…/error` payload is not a 1/KP error response.
    #[error("invalid 1/KP error response: {0}")]
    ErrorPayload(String),
    /// The topic belongs to another device, app version or extension instance,
    /// or is not a response.
    #[error("topic {0:?} is not a response for this device")]
    NotForThisDevice(String),
}

#[derive(Debug, Clone)]
struct Outstanding {
    request_id: RequestId,
    observe: Option<bool>,
    /// Sent without the held `configId` (the whole configuration asked for).
    whole: bool,
    sent_at: UnixMillis,
}

#[derive(Debug, Clone, Default)]
struct NameState {
    current: Option<Configuration>,
    outstanding: Option<Outstanding>,
    /// The parts watched with deltas (`None`: the whole configuration).
    pointers: Option<Vec<PointerBuf>>,
    /// The delta resource was refused with a 4xx: plain 7/CMP from now on.
    plain: bool,
    /// The last `observe` requested, for requests the device sends by itself.
    observe: Option<bool>,
}

/// The device-side 7/CMP state machine. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Device {
    config: DeviceConfig,
    next_request_id: RequestId,
    names: BTreeMap<Option<String>, NameState>,
    out: VecDeque<Publish>,
    events: VecDeque<DeviceEvent>,
}

impl Device {
    /// A device with no configuration yet; checks that its names make valid topics.
    pub fn new(config: DeviceConfig) -> Result<Self, DeviceError> {
        kaa_kp::request_topic(
            &config.app_version,
            &config.extension_instance,
            &config.endpoint_token,
            crate::resource::CONFIG_JSON,
            None,
        )?;
        Ok(Device {
            config,
            next_request_id: RequestId::MIN,
            names: BTreeMap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    /// The device's configuration.
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// The configuration held for `name` (`None`: default), if any.
    pub fn configuration(&self, name: Option<&str>) -> Option<&Configuration> {
        self.names
            .get(&canonical_config_name(name).map(str::to_owned))?
            .current
            .as_ref()
    }

    /// The MQTT topic filters to subscribe to for answers and pushes (a Kaa
    /// communication service delivers them without a subscription; a broker
    /// needs one).
    pub fn subscriptions(&self) -> Vec<String> {
        ["config", "applied"]
            .iter()
            .map(|r| {
                format!(
                    "{}/{}/{}/{}/{r}/#",
                    kaa_kp::PREFIX,
                    self.config.app_version,
                    self.config.extension_instance,
                    self.config.endpoint_token
                )
            })
            .collect()
    }

    /// Requests the configuration `name` (`None`: default), sending the ID of the
    /// one held so that an unchanged configuration is answered `{}`.
    /// `observe`: `Some(true)` for every change, `Some(false)` for none until the
    /// next request, `None` to leave it to the server. Replaces any request for
    /// the same name still waiting.
    pub fn request_config(
        &mut self,
        name: Option<&str>,
        observe: Option<bool>,
        now: UnixMillis,
    ) -> Result<RequestId, DeviceError> {
        self.send_request(name, observe, true, now)
    }

    /// Watches only the parts of configuration `name` that `pointers` name
    /// (RFC 6901), or the whole configuration with `None`. Takes effect with
    /// [`DeviceConfig::deltas`] on, from the next request; the document held
    /// for `name` is dropped, as it is of another shape.
    pub fn set_pointers(
        &mut self,
        name: Option<&str>,
        pointers: Option<Vec<PointerBuf>>,
    ) -> Result<(), DeviceError> {
        let path = ResourcePath::config(canonical_config_name(name))?;
        let state = self
            .names
            .entry(path.config_name().map(str::to_owned))
            .or_default();
        if state.pointers != pointers {
            state.pointers = pointers;
            state.current = None;
        }
        Ok(())
    }

    fn send_request(
        &mut self,
        name: Option<&str>,
        observe: Option<bool>,
        with_config_id: bool,
        now: UnixMillis,
    ) -> Result<RequestId, DeviceError> {
        let path = ResourcePath::config(canonical_config_name(name))?;
        let key = path.config_name().map(str::to_owned);
        let request_id = self.take_request_id();
        let state = self.names.entry(key).or_default();
        let config_id = state
            .current
            .as_ref()
            .filter(|_| with_config_id)
            .map(|c| c.config_id.clone());
        let deltas = self.config.deltas && !state.plain;
        let (resource, payload) = if deltas {
            (
                DeltaPath::new(path.name())?.to_string(),
                DeltaRequest {
                    config_id: config_id.map(Into::into),
                    observe,
                    pointers: state.pointers.clone(),
                }
                .to_json(),
            )
        } else {
            (
                path.to_string(),
                ConfigRequest {
                    config_id: config_id.map(Into::into),
                    observe,
                }
                .to_json(),
            )
        };
        state.outstanding = Some(Outstanding {
            request_id,
            observe,
            whole: !with_config_id,
            sent_at: now,
        });
        state.observe = observe;
        let topic = kaa_kp::request_topic(
            &self.config.app_version,
            &self.config.extension_instance,
            &self.config.endpoint_token,
            &resource,
            Some(request_id),
        )?;
        self.out.push_back(Publish { topic, payload });
        Ok(request_id)
    }

    /// Reports the configuration `config_id` of `name` applied (status 200).
    pub fn report_applied(
        &mut self,
        name: Option<&str>,
        config_id: &str,
        _now: UnixMillis,
    ) -> Result<(), DeviceError> {
        self.report(name, AppliedRequest::applied(config_id))
    }

    /// Reports the configuration `config_id` of `name` rejected, with a non-2xx
    /// `status_code` and the reason.
    pub fn report_rejected(
        &mut self,
        name: Option<&str>,
        config_id: &str,
        status_code: i32,
        reason_phrase: &str,
        _now: UnixMillis,
    ) -> Result<(), DeviceError> {
        self.report(
            name,
            AppliedRequest::rejected(config_id, status_code, reason_phrase),
        )
    }

    fn report(
        &mut self,
        name: Option<&str>,
        report: AppliedRequest<'_>,
    ) -> Result<(), DeviceError> {
        let path = ResourcePath::applied(canonical_config_name(name))?;
        // Kaa's clients send applied reports without a request ID (no response
        // wanted); a name made of digits needs one, or it would read as one.
        let topic = match self.topic(&path, None) {
            Ok(topic) => topic,
            Err(DeviceError::Topic(TopicError::NumericLastLevel { .. })) => {
                let id = self.take_request_id();
                self.topic(&path, Some(id))?
            }
            Err(e) => return Err(e),
        };
        self.out.push_back(Publish {
            topic,
            payload: report.to_json(),
        });
        Ok(())
    }

    /// A message received from the server.
    pub fn handle_publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        now: UnixMillis,
    ) -> Result<(), DeviceError> {
        let t = Topic::parse(topic)?;
        let foreign = || DeviceError::NotForThisDevice(topic.to_owned());
        if t.app_version_name() != self.config.app_version
            || t.extension_instance_name() != self.config.extension_instance
            || t.endpoint_token() != self.config.endpoint_token
        {
            return Err(foreign());
        }
        let Some(kind) = t.response() else {
            return Err(foreign());
        };
        let (path, on_delta) = if t.resource_path().starts_with(CONFIG_JSON_PATCH) {
            let delta = DeltaPath::parse(t.resource_path())?;
            (ResourcePath::config(delta.name())?, true)
        } else {
            (ResourcePath::parse(t.resource_path())?, false)
        };
        let key = path.config_name().map(str::to_owned);
        // Is this the answer to the request still waiting for this name?
        let answered = {
            let state = self.names.entry(key.clone()).or_default();
            let mine = t.request_id().is_some()
                && path.kind() == ResourceKind::Config
                && state
                    .outstanding
                    .as_ref()
                    .is_some_and(|o| Some(o.request_id) == t.request_id());
            if mine && kind == ResponseKind::Status {
                state.outstanding = None;
            }
            mine
        };
        match (kind, path.kind()) {
            (ResponseKind::Error, resource) => {
                let e = ErrorResponse::from_json(payload)
                    .map_err(|e| DeviceError::ErrorPayload(e.to_string()))?;
                // A 4xx on the delta resource: a server without the extension.
                let fall_back = answered && on_delta && (400..500).contains(&e.status_code);
                let retrying = answered && (e.status_code >= 500 || fall_back);
                if answered && let Some(state) = self.names.get_mut(&key) {
                    if fall_back {
                        state.plain = true;
                        state.current = state.current.take().filter(|_| state.pointers.is_none());
                        if let Some(o) = state.outstanding.as_mut() {
                            o.sent_at = UnixMillis(i64::MIN / 2);
                        }
                    } else if retrying {
                        // Send again at the next `handle_timeout`.
                        if let Some(o) = state.outstanding.as_mut() {
                            o.sent_at = UnixMillis(i64::MIN / 2);
                        }
                    } else {
                        state.outstanding = None;
                    }
                }
                // Errors for requests no longer waiting are stale; say nothing.
                if answered || resource == ResourceKind::Applied {
                    self.events.push_back(DeviceEvent::Error {
                        name: key,
                        resource,
                        status_code: e.status_code,
                        reason_phrase: e.reason_phrase,
                        retrying,
                    });
                }
            }
            (ResponseKind::Status, ResourceKind::Applied) => {}
            (ResponseKind::Status, ResourceKind::Config) if on_delta => {
                let pushed = t.request_id().is_none();
                self.handle_delta(key, DeltaResponse::from_json(payload)?, pushed, now)?;
            }
            (ResponseKind::Status, ResourceKind::Config)
                if self.config.deltas && !self.names.get(&key).is_some_and(|s| s.plain) =>
            {
                // A 7/CMP push to a device on the delta resource (a CMX that
                // does not know its subscription yet, e.g. after a restart): a
                // sign of a change; ask on the delta resource.
                ConfigResponse::from_json(payload)?;
                let observe = self.names.get(&key).and_then(|s| s.observe);
                self.send_request(key.as_deref(), observe, true, now)?;
            }
            (ResponseKind::Status, ResourceKind::Config) => {
                match ConfigResponse::from_json(payload)? {
                    ConfigResponse::Unchanged => {
                        self.events.push_back(DeviceEvent::Unchanged { name: key });
                    }
                    ConfigResponse::Config { config_id, config } => {
                        let state = self.names.entry(key.clone()).or_default();
                        if state
                            .current
                            .as_ref()
                            .is_some_and(|c| c.config_id == config_id && c.config == config)
                        {
                            self.events.push_back(DeviceEvent::Unchanged { name: key });
                            return Ok(());
                        }
                        state.current = Some(Configuration {
                            config_id: config_id.clone(),
                            config: config.clone(),
                        });
                        let pushed = t.request_id().is_none();
                        self.events.push_back(DeviceEvent::Configuration {
                            name: key.clone(),
                            config_id: config_id.clone(),
                            config,
                            pushed,
                        });
                        if self.config.auto_report_applied {
                            self.report_applied(key.as_deref(), &config_id, now)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn handle_delta(
        &mut self,
        key: Option<String>,
        response: DeltaResponse,
        pushed: bool,
        now: UnixMillis,
    ) -> Result<(), DeviceError> {
        let state = self.names.entry(key.clone()).or_default();
        let held = state.current.as_ref();
        let (config_id, config) = match response {
            DeltaResponse::Unchanged => {
                self.events.push_back(DeviceEvent::Unchanged { name: key });
                return Ok(());
            }
            DeltaResponse::Config {
                config_id,
                config,
                view_id,
            } if view_id.is_some() == state.pointers.is_some() => (config_id, config),
            DeltaResponse::Config { .. } => {
                // A view where the whole configuration was asked for, or the
                // other way round (a server that lost the subscription).
                let observe = state.observe;
                self.send_request(key.as_deref(), observe, false, now)?;
                return Ok(());
            }
            DeltaResponse::Patch {
                config_id,
                base_config_id,
                view_id,
                patch,
            } => {
                let result = match held {
                    _ if view_id.is_some() != state.pointers.is_some() => {
                        Err(DeltaError::ShapeMismatch)
                    }
                    Some(held) if held.config_id == base_config_id => {
                        delta::apply(&held.config, &patch).and_then(|doc| {
                            delta::verify(view_id.as_deref().unwrap_or(&config_id), &doc)
                                .map(|()| doc)
                        })
                    }
                    _ => Err(DeltaError::BaseMismatch {
                        base: base_config_id,
                        held: held.map(|h| h.config_id.clone()),
                    }),
                };
                match result {
                    Ok(doc) => (config_id, doc),
                    Err(error) => {
                        // A missed push: ask from what is held; a wrong result:
                        // ask for the whole configuration.
                        let with_config_id = matches!(error, DeltaError::BaseMismatch { .. });
                        let observe = state.observe;
                        self.events.push_back(DeviceEvent::DeltaRefused {
                            name: key.clone(),
                            error,
                        });
                        self.send_request(key.as_deref(), observe, with_config_id, now)?;
                        return Ok(());
                    }
                }
            }
        };
        if state
            .current
            .as_ref()
            .is_some_and(|c| c.config_id == config_id && c.config == config)
        {
            self.events.push_back(DeviceEvent::Unchanged { name: key });
            return Ok(());
        }
        state.current = Some(Configuration {
            config_id: config_id.clone(),
            config: config.clone(),
        });
        self.events.push_back(DeviceEvent::Configuration {
            name: key.clone(),
            config_id: config_id.clone(),
            config,
            pushed,
        });
        if self.config.auto_report_applied {
            self.report_applied(key.as_deref(), &config_id, now)?;
        }
        Ok(())
    }

    /// Sends again the configuration requests that got no answer in time.
    pub fn handle_timeout(&mut self, now: UnixMillis) {
        let timeout = self.config.request_timeout;
        let due: Vec<(Option<String>, Option<bool>, bool)> = self
            .names
            .iter()
            .filter_map(|(name, s)| {
                let o = s.outstanding.as_ref()?;
                (o.sent_at.saturating_add(timeout) <= now)
                    .then(|| (name.clone(), o.observe, o.whole))
            })
            .collect();
        for (name, observe, whole) in due {
            // The name was valid when first requested.
            let _ = self.send_request(name.as_deref(), observe, !whole, now);
        }
    }

    /// When [`Device::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<UnixMillis> {
        self.names
            .values()
            .filter_map(|s| s.outstanding.as_ref())
            .map(|o| o.sent_at.saturating_add(self.config.request_timeout))
            .min()
    }

    /// The next message to publish.
    pub fn poll_publish(&mut self) -> Option<Publish> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<DeviceEvent> {
        self.events.pop_front()
    }

    /// True while a configuration request for `name` waits for its answer.
    pub fn is_waiting(&self, name: Option<&str>) -> bool {
        self.names
            .get(&canonical_config_name(name).map(str::to_owned))
            .is_some_and(|s| s.outstanding.is_some())
    }

    fn take_request_id(&mut self) -> RequestId {
        let id = self.next_request_id;
        self.next_request_id = id.wrapping_next();
        id
    }

    fn topic(
        &self,
        path: &ResourcePath<'_>,
        request_id: Option<RequestId>,
    ) -> Result<String, DeviceError> {
        Ok(kaa_kp::request_topic(
            &self.config.app_version,
            &self.config.extension_instance,
            &self.config.endpoint_token,
            &path.to_string(),
            request_id,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BASE: &str = "kp1/kettle-v1/cmx/tok";

    fn device() -> Device {
        Device::new(DeviceConfig::new("kettle-v1", "cmx", "tok")).unwrap()
    }

    fn events(d: &mut Device) -> Vec<DeviceEvent> {
        std::iter::from_fn(|| d.poll_event()).collect()
    }

    #[test]
    fn request_topics_and_payloads() {
        let mut d = device();
        let now = UnixMillis(0);
        assert_eq!(d.request_config(None, None, now).unwrap().get(), 1);
        assert_eq!(
            d.poll_publish().unwrap(),
            Publish {
                topic: format!("{BASE}/config/json/1"),
                payload: b"{}".to_vec()
            }
        );
        d.request_config(Some("network"), Some(false), now).unwrap();
        let p = d.poll_publish().unwrap();
        assert_eq!(p.topic, format!("{BASE}/config/json/network/2"));
        assert_eq!(p.payload, br#"{"observe":false}"#);
        // "default" is the default configuration.
        d.request_config(Some("default"), None, now).unwrap();
        assert_eq!(
            d.poll_publish().unwrap().topic,
            format!("{BASE}/config/json/3")
        );
        assert!(d.request_config(Some("a/b"), None, now).is_err());
        assert_eq!(
            d.subscriptions(),
            [format!("{BASE}/config/#"), format!("{BASE}/applied/#")]
        );
        assert!(Device::new(DeviceConfig::new("v+1", "cmx", "tok")).is_err());
    }

    #[test]
    fn responses_pushes_and_the_held_configuration() {
        let mut d = device();
        let now = UnixMillis(0);
        d.request_config(None, Some(true), now).unwrap();
        let p = d.poll_publish().unwrap();
        d.handle_publish(
            &format!("{}/status", p.topic),
            br#"{"configId":"c1","config":{"a":1}}"#,
            now,
        )
        .unwrap();
        assert!(!d.is_waiting(None));
        assert_eq!(
            events(&mut d),
            [DeviceEvent::Configuration {
                name: None,
                config_id: "c1".into(),
                config: json!({"a":1}),
                pushed: false
            }]
        );
        // The next request names what the device holds.
        d.request_config(None, Some(true), now).unwrap();
        let p = d.poll_publish().unwrap();
        assert_eq!(p.payload, br#"{"configId":"c1","observe":true}"#);
        d.handle_publish(&format!("{}/status", p.topic), b"{}", now)
            .unwrap();
        assert_eq!(events(&mut d), [DeviceEvent::Unchanged { name: None }]);
        // A push.
        d.handle_publish(
            &format!("{BASE}/config/json/status"),
            br#"{"configId":"c2","config":2}"#,
            now,
        )
        .unwrap();
        assert!(matches!(
            &events(&mut d)[..],
            [DeviceEvent::Configuration { pushed: true, .. }]
        ));
        assert_eq!(d.configuration(None).unwrap().config_id, "c2");
        // A push for a named configuration called "status".
        d.handle_publish(
            &format!("{BASE}/config/json/status/status"),
            br#"{"configId":"s1","config":null}"#,
            now,
        )
        .unwrap();
        assert_eq!(d.configuration(Some("status")).unwrap().config_id, "s1");
        assert_eq!(d.configuration(None).unwrap().config_id, "c2");
    }

    #[test]
    fn errors_retries_and_timeouts() {
        let mut d = device();
        d.request_config(None, None, UnixMillis(0)).unwrap();
        let p = d.poll_publish().unwrap();
        assert_eq!(d.poll_timeout(), Some(UnixMillis(10_000)));
        d.handle_publish(
            &format!("{}/error", p.topic),
            br#"{"statusCode":504,"reasonPhrase":"slow"}"#,
            UnixMillis(1),
        )
        .unwrap();
        assert!(matches!(
            &events(&mut d)[..],
            [DeviceEvent::Error {
                status_code: 504,
                retrying: true,
                ..
            }]
        ));
        d.handle_timeout(UnixMillis(2));
        let again = d.poll_publish().unwrap();
        assert_eq!(again.topic, format!("{BASE}/config/json/2"));
        // A 4xx is final.
        d.handle_publish(
            &format!("{}/error", again.topic),
            br#"{"statusCode":400,"reasonPhrase":"bad"}"#,
            UnixMillis(3),
        )
        .unwrap();
        assert!(!d.is_waiting(None));
        assert_eq!(d.poll_timeout(), None);
        // No answer at all: sent again after the timeout.
        d.request_config(Some("net"), None, UnixMillis(0)).unwrap();
        d.poll_publish();
        d.handle_timeout(UnixMillis(9_999));
        assert!(d.poll_publish().is_none());
        d.handle_timeout(UnixMillis(10_000));
        assert_eq!(
            d.poll_publish().unwrap().topic,
            format!("{BASE}/config/json/net/4")
        );
    }

    #[test]
    fn applied_reports() {
        let mut d = device();
        d.report_applied(Some("net"), "n1", UnixMillis(0)).unwrap();
        let p = d.poll_publish().unwrap();
        assert_eq!(p.topic, format!("{BASE}/applied/json/net"));
        assert_eq!(p.payload, br#"{"configId":"n1","statusCode":200}"#);
        d.report_rejected(None, "c9", 400, "WPA2 is not supported", UnixMillis(0))
            .unwrap();
        let p = d.poll_publish().unwrap();
        assert_eq!(p.topic, format!("{BASE}/applied/json"));
        assert_eq!(
            AppliedRequest::from_json(&p.payload).unwrap(),
            AppliedRequest::rejected("c9", 400, "WPA2 is not supported")
        );
        // A numeric name needs a request ID.
        d.report_applied(Some("42"), "x", UnixMillis(0)).unwrap();
        assert_eq!(
            d.poll_publish().unwrap().topic,
            format!("{BASE}/applied/json/42/1")
        );
    }

    #[test]
    fn auto_report_and_foreign_or_bad_messages() {
        let mut config = DeviceConfig::new("kettle-v1", "cmx", "tok");
        config.auto_report_applied = true;
        let mut d = Device::new(config).unwrap();
        d.handle_publish(
            &format!("{BASE}/config/json/status"),
            br#"{"configId":"c1","config":1}"#,
            UnixMillis(0),
        )
        .unwrap();
        assert_eq!(
            d.poll_publish().unwrap().topic,
            format!("{BASE}/applied/json")
        );
        for topic in [
            "kp1/kettle-v1/cmx/other/config/json/status",
            "kp1/kettle-v2/cmx/tok/config/json/status",
            "kp1/kettle-v1/cmx/tok/config/json",
        ] {
            assert!(
                matches!(
                    d.handle_publish(topic, b"{}", UnixMillis(0)),
                    Err(DeviceError::NotForThisDevice(_))
                ),
                "{topic}"
            );
        }
        assert!(matches!(
            d.handle_publish(
                &format!("{BASE}/config/json/status"),
                br#"{"configId":"x"}"#,
                UnixMillis(0)
            ),
            Err(DeviceError::Payload(_))
        ));
        assert!(matches!(
            d.handle_publish(&format!("{BASE}/telemetry/status"), b"{}", UnixMillis(0)),
            Err(DeviceError::Resource(_))
        ));
        assert!(d.handle_publish("kp2/x", b"{}", UnixMillis(0)).is_err());
    }

    // -----------------------------------------------------------------------
    // Deltas (kaa-rs extension)
    // -----------------------------------------------------------------------

    use crate::canonical::config_id_of;
    use crate::delta::{DeltaRequest, DeltaResponse, answer, parse_pointer};
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn delta_device() -> Device {
        let mut config = DeviceConfig::new("kettle-v1", "cmx", "tok");
        config.deltas = true;
        Device::new(config).unwrap()
    }

    fn big(seed: i64) -> serde_json::Value {
        (0..24)
            .map(|i| (format!("key{i}"), json!(seed + i)))
            .chain([(
                "name".to_owned(),
                json!("a kettle that boils water for tea"),
            )])
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    #[test]
    fn delta_requests_patches_and_refusals() {
        let mut d = delta_device();
        let now = UnixMillis(0);
        d.request_config(Some("net"), Some(true), now).unwrap();
        let p = d.poll_publish().unwrap();
        assert_eq!(p.topic, format!("{BASE}/config/json-patch/net/1"));
        assert_eq!(p.payload, br#"{"observe":true}"#);
        let (v1, mut v2) = (big(0), big(0));
        v2["key3"] = json!("three");
        let (id1, id2) = (config_id_of(&v1), config_id_of(&v2));
        let whole = answer(None, None, &id1, &v1, None);
        d.handle_publish(&format!("{}/status", p.topic), &whole.to_json(), now)
            .unwrap();
        assert!(matches!(
            &events(&mut d)[..],
            [DeviceEvent::Configuration { pushed: false, .. }]
        ));
        // A push with a patch.
        let push = answer(Some(&id1), None, &id2, &v2, Some(&v1));
        assert!(matches!(push, DeltaResponse::Patch { .. }));
        let push_topic = format!("{BASE}/config/json-patch/net/status");
        d.handle_publish(&push_topic, &push.to_json(), now).unwrap();
        assert_eq!(
            events(&mut d),
            [DeviceEvent::Configuration {
                name: Some("net".into()),
                config_id: id2.clone(),
                config: v2.clone(),
                pushed: true
            }]
        );
        // The same patch again: its base is no longer held; ask from what is held.
        d.handle_publish(&push_topic, &push.to_json(), now).unwrap();
        assert!(matches!(
            &events(&mut d)[..],
            [DeviceEvent::DeltaRefused {
                error: DeltaError::BaseMismatch { .. },
                ..
            }]
        ));
        let again = d.poll_publish().unwrap();
        assert_eq!(
            DeltaRequest::from_json(&again.payload)
                .unwrap()
                .config_id
                .as_deref(),
            Some(id2.as_str())
        );
        // A patch whose result has another config ID: ask for the whole configuration.
        let mut v3 = v2.clone();
        v3["key4"] = json!("four");
        let DeltaResponse::Patch { patch, .. } =
            answer(Some(&id2), None, &config_id_of(&v3), &v3, Some(&v2))
        else {
            panic!()
        };
        let lie = DeltaResponse::Patch {
            config_id: "0000".into(),
            base_config_id: id2.clone(),
            view_id: None,
            patch,
        };
        d.handle_publish(&format!("{}/status", again.topic), &lie.to_json(), now)
            .unwrap();
        assert!(matches!(
            &events(&mut d)[..],
            [DeviceEvent::DeltaRefused {
                error: DeltaError::ConfigIdMismatch { .. },
                ..
            }]
        ));
        let whole_again = d.poll_publish().unwrap();
        assert_eq!(whole_again.payload, br#"{"observe":true}"#);
        assert_eq!(
            d.configuration(Some("net")).unwrap().config_id,
            id2,
            "the held configuration stays"
        );
        // A 7/CMP push (a CMX that lost the subscription): ask on the delta resource.
        d.handle_publish(
            &format!("{BASE}/config/json/net/status"),
            br#"{"configId":"x","config":1}"#,
            now,
        )
        .unwrap();
        let asked = d.poll_publish().unwrap();
        assert!(
            asked
                .topic
                .starts_with(&format!("{BASE}/config/json-patch/net/"))
        );
        assert_eq!(d.configuration(Some("net")).unwrap().config_id, id2);
        // Applied reports name the whole configuration, on 7/CMP's resource.
        d.report_applied(Some("net"), &id2, now).unwrap();
        assert_eq!(
            d.poll_publish().unwrap().topic,
            format!("{BASE}/applied/json/net")
        );
    }

    #[test]
    fn pointers_and_the_fallback_to_plain_7cmp() {
        let mut d = delta_device();
        let now = UnixMillis(0);
        let pointers = vec![parse_pointer("/key1").unwrap()];
        d.set_pointers(None, Some(pointers.clone())).unwrap();
        d.request_config(None, None, now).unwrap();
        let p = d.poll_publish().unwrap();
        assert_eq!(p.topic, format!("{BASE}/config/json-patch/1"));
        assert_eq!(p.payload, br#"{"pointers":["/key1"]}"#);
        let v1 = big(0);
        let a = answer(None, Some(&pointers), &config_id_of(&v1), &v1, None);
        d.handle_publish(&format!("{}/status", p.topic), &a.to_json(), now)
            .unwrap();
        assert_eq!(d.configuration(None).unwrap().config, json!({"/key1": 1}));
        assert_eq!(d.configuration(None).unwrap().config_id, config_id_of(&v1));
        // A server without the extension: 404, then plain 7/CMP.
        d.request_config(None, None, now).unwrap();
        let p = d.poll_publish().unwrap();
        d.handle_publish(
            &format!("{}/error", p.topic),
            br#"{"statusCode":404,"reasonPhrase":"unknown resource"}"#,
            now,
        )
        .unwrap();
        assert!(matches!(
            &events(&mut d)[..],
            [
                _,
                DeviceEvent::Error {
                    status_code: 404,
                    retrying: true,
                    ..
                }
            ]
        ));
        d.handle_timeout(now);
        let plain = d.poll_publish().unwrap();
        assert_eq!(plain.topic, format!("{BASE}/config/json/3"));
        assert_eq!(
            plain.payload, b"{}",
            "the view is not a 7/CMP configuration"
        );
    }

    /// What the server side of the model does: answers by `delta::answer`,
    /// with bases from a cache that may have lost any of them.
    struct Server {
        current: (String, serde_json::Value),
        cache: HashMap<String, serde_json::Value>,
        pointers: Option<Vec<PointerBuf>>,
        /// What the server believes the device holds.
        believed: Option<String>,
    }

    impl Server {
        fn answer(&self, held: Option<&str>) -> DeltaResponse {
            let base = held.and_then(|h| self.cache.get(h));
            answer(
                held,
                self.pointers.as_deref(),
                &self.current.0,
                &self.current.1,
                base,
            )
        }

        /// Answers every request the device published.
        fn serve(&mut self, d: &mut Device) {
            let mut rounds = 0;
            while let Some(p) = d.poll_publish() {
                rounds += 1;
                assert!(rounds < 50, "the device keeps asking");
                if !p.topic.contains("/config/json-patch") {
                    continue; // applied reports
                }
                let request = DeltaRequest::from_json(&p.payload).unwrap().into_owned();
                let response = self.answer(request.config_id.as_deref());
                self.believed = Some(self.current.0.clone());
                d.handle_publish(
                    &format!("{}/status", p.topic),
                    &response.to_json(),
                    UnixMillis(0),
                )
                .unwrap();
            }
        }

        fn converged(&self, d: &Device) -> bool {
            let doc = match &self.pointers {
                Some(p) => crate::delta::view(&self.current.1, p),
                None => self.current.1.clone(),
            };
            d.configuration(None)
                == Some(&Configuration {
                    config_id: self.current.0.clone(),
                    config: doc,
                })
        }
    }

    #[derive(Debug, Clone)]
    struct Update {
        key: u8,
        value: i64,
        remove: bool,
        cached: bool,
        delivered: bool,
    }

    fn updates() -> impl Strategy<Value = Vec<Update>> {
        proptest::collection::vec(
            (
                0u8..24,
                -3i64..3,
                any::<bool>(),
                proptest::bool::weighted(0.7),
                proptest::bool::weighted(0.5),
            )
                .prop_map(|(key, value, remove, cached, delivered)| Update {
                    key,
                    value,
                    remove,
                    cached,
                    delivered,
                }),
            0..24,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A device with deltas on that misses any number of pushes (and a
        /// server that lost any of the bases) still ends with the latest
        /// configuration: at once when a later push reaches it, and at the
        /// latest on its next request (a reconnect).
        #[test]
        fn a_delta_device_missing_pushes_converges(updates in updates(), watch in any::<bool>()) {
            let mut d = delta_device();
            let pointers = watch.then(|| vec![parse_pointer("/key1").unwrap(), parse_pointer("/key5").unwrap()]);
            d.set_pointers(None, pointers.clone()).unwrap();
            let v0 = big(0);
            let id0 = config_id_of(&v0);
            let mut server = Server {
                current: (id0.clone(), v0.clone()),
                cache: HashMap::from([(id0, v0)]),
                pointers,
                believed: None,
            };
            d.request_config(None, Some(true), UnixMillis(0)).unwrap();
            server.serve(&mut d);
            prop_assert!(server.converged(&d));
            for u in updates {
                let mut next = server.current.1.clone();
                let key = format!("key{}", u.key);
                if u.remove {
                    next.as_object_mut().unwrap().remove(&key);
                } else {
                    next[key.as_str()] = json!(u.value);
                }
                let id = config_id_of(&next);
                if u.cached {
                    server.cache.insert(id.clone(), next.clone());
                }
                server.current = (id, next);
                let push = server.answer(server.believed.clone().as_deref());
                let pushes = !matches!(push, DeltaResponse::Unchanged) && !push.is_quiet();
                if pushes {
                    server.believed = Some(server.current.0.clone());
                    if u.delivered {
                        d.handle_publish(&format!("{BASE}/config/json-patch/status"), &push.to_json(), UnixMillis(0))
                            .unwrap();
                        server.serve(&mut d);
                        // Whatever it missed before, a push that arrives brings it up to date.
                        let view_current = d.configuration(None).map(|c| &c.config)
                            == server.pointers.as_ref().map(|p| crate::delta::view(&server.current.1, p)).as_ref().or(Some(&server.current.1));
                        prop_assert!(view_current, "{:?}", d.configuration(None));
                    }
                }
            }
            // Reconnect: the device asks again.
            d.request_config(None, Some(true), UnixMillis(0)).unwrap();
            server.serve(&mut d);
            prop_assert!(server.converged(&d), "{:?}", d.configuration(None));
        }
    }
}
