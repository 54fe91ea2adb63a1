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

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use kaa_ism::UnixMillis;
use kaa_kp::{ErrorResponse, RequestId, ResponseKind, Topic, TopicError};

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
    /// The opaque configuration ID (`""`: no configuration).
    pub config_id: String,
    /// The configuration body (`null`: no configuration).
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
        /// request).
        retrying: bool,
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
    sent_at: UnixMillis,
}

#[derive(Debug, Clone, Default)]
struct NameState {
    current: Option<Configuration>,
    outstanding: Option<Outstanding>,
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
        let path = ResourcePath::config(canonical_config_name(name))?;
        let key = path.config_name().map(str::to_owned);
        let request_id = self.take_request_id();
        let config_id = self
            .names
            .get(&key)
            .and_then(|n| n.current.as_ref())
            .map(|c| c.config_id.clone());
        let topic = self.topic(&path, Some(request_id))?;
        let payload = ConfigRequest {
            config_id: config_id.map(Into::into),
            observe,
        }
        .to_json();
        self.names.entry(key).or_default().outstanding = Some(Outstanding {
            request_id,
            observe,
            sent_at: now,
        });
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
        let path = ResourcePath::parse(t.resource_path())?;
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
                let retrying = answered && e.status_code >= 500;
                if answered && let Some(state) = self.names.get_mut(&key) {
                    if retrying {
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

    /// Sends again the configuration requests that got no answer in time.
    pub fn handle_timeout(&mut self, now: UnixMillis) {
        let timeout = self.config.request_timeout;
        let due: Vec<(Option<String>, Option<bool>)> = self
            .names
            .iter()
            .filter_map(|(name, s)| {
                let o = s.outstanding.as_ref()?;
                (o.sent_at.saturating_add(timeout) <= now).then(|| (name.clone(), o.observe))
            })
            .collect();
        for (name, observe) in due {
            // The name was valid when first requested.
            let _ = self.request_config(name.as_deref(), observe, now);
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
}
