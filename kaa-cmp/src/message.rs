//! 7/CMP device messages: the JSON payloads of the configuration and applied
//! resources.
//!
//! | resource | request | response |
//! |---|---|---|
//! | `/config/json[/<name>]` | [`ConfigRequest`] `{"configId"?, "observe"?}` | [`ConfigResponse`] `{"configId", "config"}` or `{}` |
//! | `/applied/json[/<name>]` | [`AppliedRequest`] `{"configId", "statusCode"? = 200, "reasonPhrase"?}` | empty |
//!
//! # Strict, and where liberal
//!
//! Decoding follows the RFC JSON schemas (`schemas/0007-*.schema.json`): an object, only
//! the listed properties (`additionalProperties: false`), each of its type. An
//! error is a [`PayloadError`] whose message names the problem, e.g.
//! `invalid 7/CMP configuration request: unknown field `obsrve`, expected `configId` or `observe` at line 1 column 9`.
//! A property given twice is an error (which one would count is a guess).
//!
//! Devices in the field are written quickly, so where the meaning is unambiguous
//! a device's request is accepted anyway:
//!
//! - **Configuration request**: an empty payload (zero bytes or only
//!   whitespace), or the JSON `null`, is `{}`: "send me the current
//!   configuration". `"configId": null` and `"observe": null` are the same as the
//!   property being absent.
//! - **Applied request**: `"statusCode": null` means "not set", the schema's
//!   default 200, and `"reasonPhrase": null` is the same as absent. Kaa's official
//!   Python client reports every success as `{"configId": "<id>", "statusCode":
//!   null, "reasonPhrase": null}` (see [`crate::interop`]).
//!   A `statusCode` written as an integral float (`200.0`) is that integer.
//!
//! Everything that could make the server record or apply the wrong thing stays
//! an error: an applied request without `configId` (or with `"configId": null`:
//! which configuration was applied is unknown), a `statusCode` that is a string,
//! a boolean, fractional or out of range, a wrong type anywhere, an unknown
//! property.
//!
//! The configuration response is what a server produces and a device decodes;
//! it is decoded strictly: `configId` and `config` come in a pair or not at all.
//!
//! ```
//! use kaa_cmp::message::{AppliedRequest, ConfigRequest, ConfigResponse};
//! use serde_json::json;
//!
//! let request = ConfigRequest::from_json(br#"{"observe":true}"#)?;
//! assert_eq!(request.observe, Some(true));
//! assert_eq!(request.config_id, None);
//! assert_eq!(ConfigRequest::from_json(b"")?, ConfigRequest::default());
//!
//! let err = ConfigRequest::from_json(br#"{"observe":"yes"}"#).unwrap_err();
//! assert!(err.to_string().contains("`observe`"));
//!
//! let response = ConfigResponse::Config { config_id: "v1".into(), config: json!({"rate": 5}) };
//! assert_eq!(response.to_json(), br#"{"configId":"v1","config":{"rate":5}}"#);
//! assert_eq!(ConfigResponse::from_json(b"{}")?, ConfigResponse::Unchanged);
//!
//! let applied = AppliedRequest::from_json(br#"{"configId":"v1","statusCode":400,"reasonPhrase":"WPA2 is not supported"}"#)?;
//! assert!(!applied.is_success());
//! # Ok::<(), kaa_cmp::message::PayloadError>(())
//! ```

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// Which 7/CMP message a payload was meant to be. Non-exhaustive: extensions
/// (as [`crate::delta`]'s were) add kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// `/config/json` request.
    ConfigRequest,
    /// `/config/json` response.
    ConfigResponse,
    /// `/applied/json` request.
    AppliedRequest,
    /// `/config/json-patch` request (kaa-rs extension, [`crate::delta`]).
    DeltaRequest,
    /// `/config/json-patch` response (kaa-rs extension, [`crate::delta`]).
    DeltaResponse,
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageKind::ConfigRequest => "configuration request",
            MessageKind::ConfigResponse => "configuration response",
            MessageKind::AppliedRequest => "applied request",
            MessageKind::DeltaRequest => "configuration-delta request",
            MessageKind::DeltaResponse => "configuration-delta response",
        })
    }
}

/// A payload that is not a valid 7/CMP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// Not JSON, not an object, a wrong type, an unknown or missing property.
    #[error("invalid 7/CMP {kind}: {detail}")]
    Invalid {
        /// The message the payload was decoded as.
        kind: MessageKind,
        /// What is wrong, with the position in the payload when known. It may
        /// quote the payload (an unknown property's name, a value of the wrong
        /// type): right for the device's error response, not for a log.
        detail: String,
        /// What is wrong without any text from the payload, for logs: the class
        /// of problem and where, e.g. `wrong, missing or unknown property at line 1
        /// column 58`.
        summary: String,
    },
}

impl PayloadError {
    pub(crate) fn new(kind: MessageKind, error: serde_json::Error) -> Self {
        use serde_json::error::Category;
        let class = match error.classify() {
            Category::Syntax => "not JSON",
            Category::Data => "wrong, missing or unknown property",
            Category::Eof => "incomplete JSON",
            Category::Io => "unreadable",
        };
        let summary = if error.line() == 0 {
            class.to_owned()
        } else {
            format!("{class} at line {} column {}", error.line(), error.column())
        };
        PayloadError::Invalid {
            kind,
            detail: error.to_string(),
            summary,
        }
    }

    /// A payload that is valid JSON of the right shape but breaks a rule; the
    /// detail quotes nothing from the payload.
    pub(crate) fn semantic(kind: MessageKind, detail: &str) -> Self {
        PayloadError::Invalid {
            kind,
            detail: detail.to_owned(),
            summary: detail.to_owned(),
        }
    }

    /// A rule broken, with a detail that may quote the payload and a summary
    /// that does not.
    pub(crate) fn with_summary(kind: MessageKind, detail: String, summary: String) -> Self {
        PayloadError::Invalid {
            kind,
            detail,
            summary,
        }
    }

    /// The message the payload was decoded as.
    pub fn kind(&self) -> MessageKind {
        match self {
            PayloadError::Invalid { kind, .. } => *kind,
        }
    }

    /// What is wrong, without any text from the payload (safe to log), e.g.
    /// `invalid 7/CMP applied request: not JSON at line 1 column 2`.
    ///
    /// ```
    /// use kaa_cmp::message::ConfigRequest;
    /// let err = ConfigRequest::from_json(br#"{"observe":"my-secret"}"#).unwrap_err();
    /// assert!(err.to_string().contains("my-secret"));
    /// assert!(!err.summary().contains("my-secret"));
    /// ```
    pub fn summary(&self) -> String {
        match self {
            PayloadError::Invalid { kind, summary, .. } => {
                format!("invalid 7/CMP {kind}: {summary}")
            }
        }
    }
}

fn is_blank(payload: &[u8]) -> bool {
    payload.iter().all(u8::is_ascii_whitespace)
}

fn decode<'a, T>(
    payload: &'a [u8],
    kind: MessageKind,
    seed: impl DeserializeSeed<'a, Value = T>,
) -> Result<T, PayloadError> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let value = seed
        .deserialize(&mut de)
        .map_err(|e| PayloadError::new(kind, e))?;
    de.end().map_err(|e| PayloadError::new(kind, e))?;
    Ok(value)
}

// ---------------------------------------------------------------------------
// Configuration request
// ---------------------------------------------------------------------------

/// A device's request to `/config/json[/<name>]` (schema `0007-config-request`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ConfigRequest<'a> {
    /// `configId`: the configuration the device has applied. When it is the
    /// current one, the server answers "unchanged" (`{}`).
    #[serde(rename = "configId", skip_serializing_if = "Option::is_none")]
    pub config_id: Option<Cow<'a, str>>,
    /// `observe`: `true` asks for every future change, `false` for none until the
    /// next request; absent lets the server decide (a Kaa CMX pushes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observe: Option<bool>,
}

impl<'a> ConfigRequest<'a> {
    /// Decodes a request payload, borrowing `configId` when it has no escapes.
    /// See the [module docs](self) for what is accepted.
    pub fn from_json(payload: &'a [u8]) -> Result<Self, PayloadError> {
        if is_blank(payload) {
            return Ok(ConfigRequest::default());
        }
        decode(payload, MessageKind::ConfigRequest, ConfigRequestSeed)
    }

    /// The JSON payload.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of strings and booleans cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// An owned copy.
    pub fn into_owned(self) -> ConfigRequest<'static> {
        ConfigRequest {
            config_id: self.config_id.map(|c| Cow::Owned(c.into_owned())),
            observe: self.observe,
        }
    }
}

const CONFIG_REQUEST_FIELDS: &[&str] = &["configId", "observe"];

struct ConfigRequestSeed;

impl<'de> DeserializeSeed<'de> for ConfigRequestSeed {
    type Value = ConfigRequest<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ConfigRequestSeed {
    type Value = ConfigRequest<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with the optional properties `configId` and `observe`")
    }

    // Liberal: `null` is `{}`.
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(ConfigRequest::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut request = ConfigRequest::default();
        let (mut seen_id, mut seen_observe) = (false, false);
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match &*key.0 {
                "configId" => {
                    once(&mut seen_id, "configId")?;
                    request.config_id = map.next_value_seed(OptStr("configId"))?;
                }
                "observe" => {
                    once(&mut seen_observe, "observe")?;
                    request.observe = map.next_value_seed(OptBool("observe"))?;
                }
                other => return Err(de::Error::unknown_field(other, CONFIG_REQUEST_FIELDS)),
            }
        }
        Ok(request)
    }
}

// ---------------------------------------------------------------------------
// Configuration response
// ---------------------------------------------------------------------------

/// The server's answer on `/config/json[/<name>]` (schema `0007-config-response`),
/// as a response or a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigResponse {
    /// `{"configId", "config"}`: the current configuration. No configuration at all
    /// is `configId: ""` with `config: null` ([`ConfigResponse::absent`]).
    Config {
        /// `configId`: opaque identifier of the configuration.
        config_id: String,
        /// `config`: any JSON value.
        config: serde_json::Value,
    },
    /// `{}`: the configuration the device named in its request is still current.
    Unchanged,
}

/// The payload of [`ConfigResponse::Unchanged`].
pub const UNCHANGED_JSON: &[u8] = b"{}";

impl ConfigResponse {
    /// The absent configuration: `{"configId": "", "config": null}` (7/CMP).
    pub fn absent() -> Self {
        ConfigResponse::Config {
            config_id: String::new(),
            config: serde_json::Value::Null,
        }
    }

    /// True for the absent configuration.
    pub fn is_absent(&self) -> bool {
        matches!(self, ConfigResponse::Config { config_id, config } if config_id.is_empty() && config.is_null())
    }

    /// Decodes a response strictly: an object with both `configId` (a string) and
    /// `config` (any JSON value, `null` included), or with neither.
    pub fn from_json(payload: &[u8]) -> Result<Self, PayloadError> {
        decode(payload, MessageKind::ConfigResponse, ConfigResponseSeed)
    }

    /// The JSON payload.
    pub fn to_json(&self) -> Vec<u8> {
        // A `serde_json::Value` and a string always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Writes `{"configId":<config_id>,"config":<config>}` around configuration
    /// data that is already JSON text, without parsing it again.
    ///
    /// `config` must be exactly one JSON value (the CMX engine checks what a
    /// provider sends before it gets here); it is copied as is.
    ///
    /// ```
    /// use kaa_cmp::message::ConfigResponse;
    /// let payload = ConfigResponse::encode_raw("v\"2", br#"{"rate":5}"#);
    /// assert_eq!(payload, br#"{"configId":"v\"2","config":{"rate":5}}"#);
    /// assert!(ConfigResponse::from_json(&payload).is_ok());
    /// ```
    pub fn encode_raw(config_id: &str, config: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(config_id.len() + config.len() + 26);
        out.extend_from_slice(b"{\"configId\":");
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, config_id);
        out.extend_from_slice(b",\"config\":");
        out.extend_from_slice(config);
        out.push(b'}');
        out
    }
}

impl Serialize for ConfigResponse {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ConfigResponse::Config { config_id, config } => {
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("configId", config_id)?;
                map.serialize_entry("config", config)?;
                map.end()
            }
            ConfigResponse::Unchanged => s.serialize_map(Some(0))?.end(),
        }
    }
}

const CONFIG_RESPONSE_FIELDS: &[&str] = &["configId", "config"];

struct ConfigResponseSeed;

impl<'de> DeserializeSeed<'de> for ConfigResponseSeed {
    type Value = ConfigResponse;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ConfigResponseSeed {
    type Value = ConfigResponse;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with `configId` and `config`, or an empty object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut config_id: Option<String> = None;
        let mut config: Option<serde_json::Value> = None;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match &*key.0 {
                "configId" => {
                    if config_id.is_some() {
                        return Err(de::Error::duplicate_field("configId"));
                    }
                    config_id = Some(map.next_value_seed(Str("configId"))?.into_owned());
                }
                "config" => {
                    if config.is_some() {
                        return Err(de::Error::duplicate_field("config"));
                    }
                    config = Some(map.next_value()?);
                }
                other => return Err(de::Error::unknown_field(other, CONFIG_RESPONSE_FIELDS)),
            }
        }
        match (config_id, config) {
            (Some(config_id), Some(config)) => Ok(ConfigResponse::Config { config_id, config }),
            (None, None) => Ok(ConfigResponse::Unchanged),
            (Some(_), None) => Err(de::Error::custom(
                "`configId` without `config`: they must come in a pair",
            )),
            (None, Some(_)) => Err(de::Error::custom(
                "`config` without `configId`: they must come in a pair",
            )),
        }
    }
}

// ---------------------------------------------------------------------------
// Applied request
// ---------------------------------------------------------------------------

/// The default `statusCode` of an applied request: success.
pub const DEFAULT_STATUS_CODE: i32 = 200;

/// A device's report to `/applied/json[/<name>]` (schema `0007-applied-request`):
/// it received a configuration and tried to apply it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedRequest<'a> {
    /// `configId`: the configuration the device applied or rejected.
    #[serde(rename = "configId")]
    pub config_id: Cow<'a, str>,
    /// `statusCode` (default 200): 2xx applied; anything else rejected.
    #[serde(rename = "statusCode")]
    pub status_code: i32,
    /// `reasonPhrase`: why it failed, for a rejection.
    #[serde(rename = "reasonPhrase", skip_serializing_if = "Option::is_none")]
    pub reason_phrase: Option<Cow<'a, str>>,
}

impl<'a> AppliedRequest<'a> {
    /// A success report for `config_id` (status 200, no reason).
    pub fn applied(config_id: impl Into<Cow<'a, str>>) -> Self {
        AppliedRequest {
            config_id: config_id.into(),
            status_code: DEFAULT_STATUS_CODE,
            reason_phrase: None,
        }
    }

    /// A rejection of `config_id` with a non-2xx `status_code` and a reason.
    pub fn rejected(
        config_id: impl Into<Cow<'a, str>>,
        status_code: i32,
        reason_phrase: impl Into<Cow<'a, str>>,
    ) -> Self {
        AppliedRequest {
            config_id: config_id.into(),
            status_code,
            reason_phrase: Some(reason_phrase.into()),
        }
    }

    /// True for a 2xx `statusCode`: the configuration was applied. 7/CMP: "Any
    /// other status codes MUST be treated by server as a failure."
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status_code)
    }

    /// Decodes a report, borrowing strings when they have no escapes. See the
    /// [module docs](self) for what is accepted.
    pub fn from_json(payload: &'a [u8]) -> Result<Self, PayloadError> {
        if is_blank(payload) {
            let detail = "the payload is empty; `configId` is required".to_owned();
            return Err(PayloadError::Invalid {
                kind: MessageKind::AppliedRequest,
                summary: detail.clone(),
                detail,
            });
        }
        decode(payload, MessageKind::AppliedRequest, AppliedRequestSeed)
    }

    /// The JSON payload (`statusCode` always written).
    pub fn to_json(&self) -> Vec<u8> {
        // Strings and an integer always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// An owned copy.
    pub fn into_owned(self) -> AppliedRequest<'static> {
        AppliedRequest {
            config_id: Cow::Owned(self.config_id.into_owned()),
            status_code: self.status_code,
            reason_phrase: self.reason_phrase.map(|r| Cow::Owned(r.into_owned())),
        }
    }
}

const APPLIED_FIELDS: &[&str] = &["configId", "statusCode", "reasonPhrase"];

struct AppliedRequestSeed;

impl<'de> DeserializeSeed<'de> for AppliedRequestSeed {
    type Value = AppliedRequest<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for AppliedRequestSeed {
    type Value = AppliedRequest<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a JSON object with `configId` and the optional `statusCode` and `reasonPhrase`",
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut config_id = None;
        let mut status_code = None;
        let mut reason_phrase = None;
        let (mut seen_status, mut seen_reason) = (false, false);
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match &*key.0 {
                "configId" => {
                    if config_id.is_some() {
                        return Err(de::Error::duplicate_field("configId"));
                    }
                    config_id = Some(map.next_value_seed(Str("configId"))?);
                }
                "statusCode" => {
                    once(&mut seen_status, "statusCode")?;
                    status_code = map.next_value_seed(OptStatusCode)?;
                }
                "reasonPhrase" => {
                    once(&mut seen_reason, "reasonPhrase")?;
                    reason_phrase = map.next_value_seed(OptStr("reasonPhrase"))?;
                }
                other => return Err(de::Error::unknown_field(other, APPLIED_FIELDS)),
            }
        }
        Ok(AppliedRequest {
            config_id: config_id.ok_or_else(|| de::Error::missing_field("configId"))?,
            status_code: status_code.unwrap_or(DEFAULT_STATUS_CODE),
            reason_phrase,
        })
    }
}

// ---------------------------------------------------------------------------
// Field helpers
// ---------------------------------------------------------------------------

fn once<E: de::Error>(seen: &mut bool, field: &'static str) -> Result<(), E> {
    if std::mem::replace(seen, true) {
        Err(E::duplicate_field(field))
    } else {
        Ok(())
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Str("property name")).map(Key)
    }
}

/// A string value of the named field, borrowed when it has no escapes.
struct Str(&'static str);

impl<'de> DeserializeSeed<'de> for Str {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Str {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` as a string", self.0)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// A string value of the named field, or `null`.
struct OptStr(&'static str);

impl<'de> DeserializeSeed<'de> for OptStr {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for OptStr {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` as a string", self.0)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Str(self.0).deserialize(d).map(Some)
    }
}

/// A boolean value of the named field, or `null`.
struct OptBool(&'static str);

impl<'de> DeserializeSeed<'de> for OptBool {
    type Value = Option<bool>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for OptBool {
    type Value = Option<bool>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` as a boolean", self.0)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_bool(self)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
}

/// `statusCode`: a JSON number that is an integer in `i32` range, or `null`
/// (not set).
struct OptStatusCode;

impl<'de> DeserializeSeed<'de> for OptStatusCode {
    type Value = Option<i32>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for OptStatusCode {
    type Value = Option<i32>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        StatusCode.expecting(f)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        StatusCode.deserialize(d).map(Some)
    }
}

/// `statusCode`: a JSON number that is an integer in `i32` range.
struct StatusCode;

impl<'de> DeserializeSeed<'de> for StatusCode {
    type Value = i32;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StatusCode {
    type Value = i32;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`statusCode` as an integer HTTP status code")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        i32::try_from(v).map_err(|_| E::custom(format!("`statusCode` {v} is out of range")))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i32::try_from(v).map_err(|_| E::custom(format!("`statusCode` {v} is out of range")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        if v.fract() == 0.0 && v >= f64::from(i32::MIN) && v <= f64::from(i32::MAX) {
            // Integral and in range: the conversion is exact.
            Ok(v as i32)
        } else {
            Err(E::custom(format!(
                "`statusCode` {v} is not an integer HTTP status code"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn err(result: Result<impl fmt::Debug, PayloadError>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn config_request_rfc_examples() {
        let r = ConfigRequest::from_json(br#"{"observe":false}"#).unwrap();
        assert_eq!((r.config_id, r.observe), (None, Some(false)));
        let r = ConfigRequest::from_json(br#"{ "configId": "97016dbe8bb4adff8f754ecbf24612f2" }"#)
            .unwrap();
        assert_eq!(
            r.config_id.as_deref(),
            Some("97016dbe8bb4adff8f754ecbf24612f2")
        );
        assert!(matches!(r.config_id, Some(Cow::Borrowed(_))));
        assert_eq!(r.observe, None);
        let r = ConfigRequest::from_json(br#"{"observe":true}"#).unwrap();
        assert_eq!(r.observe, Some(true));
        let r = ConfigRequest::from_json(br#"{"configId":"a\"b","observe":true}"#).unwrap();
        assert_eq!(r.config_id.as_deref(), Some("a\"b"));
    }

    #[test]
    fn config_request_leniencies() {
        for payload in [&b""[..], b"  \r\n", b"{}", b"null", b" null "] {
            assert_eq!(
                ConfigRequest::from_json(payload).unwrap(),
                ConfigRequest::default(),
                "{payload:?}"
            );
        }
        let r = ConfigRequest::from_json(br#"{"configId":null,"observe":null}"#).unwrap();
        assert_eq!(r, ConfigRequest::default());
    }

    #[test]
    fn config_request_errors_name_the_problem() {
        let e = err(ConfigRequest::from_json(br#"{"observe":true,"obsrve":1}"#));
        assert!(
            e.contains("unknown field `obsrve`") && e.contains("configuration request"),
            "{e}"
        );
        let e = err(ConfigRequest::from_json(br#"{"observe":"yes"}"#));
        assert!(e.contains("`observe` as a boolean"), "{e}");
        let e = err(ConfigRequest::from_json(br#"{"configId":5}"#));
        assert!(e.contains("`configId` as a string"), "{e}");
        let e = err(ConfigRequest::from_json(
            br#"{"observe":true,"observe":false}"#,
        ));
        assert!(e.contains("duplicate field `observe`"), "{e}");
        let e = err(ConfigRequest::from_json(br#"[1]"#));
        assert!(e.contains("JSON object"), "{e}");
        let e = err(ConfigRequest::from_json(br#"{"observe":true"#));
        assert!(e.contains("EOF"), "{e}");
        let e = err(ConfigRequest::from_json(br#"{} {}"#));
        assert!(e.contains("trailing"), "{e}");
        let e = err(ConfigRequest::from_json(b"{\"configId\":\"\xff\"}"));
        assert!(e.contains("configuration request"), "{e}");
    }

    #[test]
    fn summaries_quote_nothing_from_the_payload() {
        let payloads: [&[u8]; 6] = [
            br#"{"s3cr3t":1}"#,
            br#"{"observe":"s3cr3t"}"#,
            br#"{"configId":5,"s3cr3t":1}"#,
            br#"s3cr3t"#,
            br#"{"observe":true"#,
            b"{\"configId\":\"s3cr3t\xff\"}",
        ];
        for payload in payloads {
            let e = ConfigRequest::from_json(payload).unwrap_err();
            assert!(
                e.summary()
                    .starts_with("invalid 7/CMP configuration request: "),
                "{e:?}"
            );
            assert!(
                !e.summary().contains("s3cr3t"),
                "{payload:?}: {}",
                e.summary()
            );
            let e = AppliedRequest::from_json(payload).unwrap_err();
            assert!(
                !e.summary().contains("s3cr3t"),
                "{payload:?}: {}",
                e.summary()
            );
        }
        let e =
            AppliedRequest::from_json(br#"{"configId":"x","statusCode":"s3cr3t"}"#).unwrap_err();
        assert!(e.to_string().contains("s3cr3t"), "the device is told");
        assert_eq!(
            e.summary(),
            "invalid 7/CMP applied request: wrong, missing or unknown property at line 1 column 37"
        );
        let e = AppliedRequest::from_json(b"").unwrap_err();
        assert!(
            e.summary().contains("`configId` is required"),
            "{}",
            e.summary()
        );
    }

    #[test]
    fn config_request_round_trip() {
        for r in [
            ConfigRequest::default(),
            ConfigRequest {
                config_id: Some("x".into()),
                observe: None,
            },
            ConfigRequest {
                config_id: Some("é\"\\".into()),
                observe: Some(false),
            },
        ] {
            assert_eq!(ConfigRequest::from_json(&r.to_json()).unwrap(), r);
        }
        assert_eq!(ConfigRequest::default().to_json(), b"{}");
    }

    #[test]
    fn config_response_shapes() {
        assert_eq!(
            ConfigResponse::from_json(b"{}").unwrap(),
            ConfigResponse::Unchanged
        );
        assert_eq!(ConfigResponse::Unchanged.to_json(), UNCHANGED_JSON);
        let absent = ConfigResponse::from_json(br#"{"configId":"","config":null}"#).unwrap();
        assert!(absent.is_absent());
        assert_eq!(absent, ConfigResponse::absent());
        assert_eq!(absent.to_json(), br#"{"configId":"","config":null}"#);
        let r = ConfigResponse::from_json(
            br#"{"configId":"97016dbe","config":{"mode":"AP","ssid":"Smart Teapot"}}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            ConfigResponse::Config {
                config_id: "97016dbe".into(),
                config: json!({"mode":"AP","ssid":"Smart Teapot"})
            }
        );
        assert!(!r.is_absent());
        for config in [
            json!(5),
            json!("s"),
            json!([1, 2]),
            json!(null),
            json!(true),
        ] {
            let r = ConfigResponse::Config {
                config_id: "id".into(),
                config,
            };
            assert_eq!(ConfigResponse::from_json(&r.to_json()).unwrap(), r);
        }
    }

    #[test]
    fn config_response_is_strict() {
        let e = err(ConfigResponse::from_json(br#"{"configId":"x"}"#));
        assert!(e.contains("in a pair"), "{e}");
        let e = err(ConfigResponse::from_json(br#"{"config":{}}"#));
        assert!(e.contains("in a pair"), "{e}");
        let e = err(ConfigResponse::from_json(
            br#"{"configId":"x","config":1,"extra":2}"#,
        ));
        assert!(e.contains("unknown field `extra`"), "{e}");
        assert!(ConfigResponse::from_json(b"").is_err());
        assert!(ConfigResponse::from_json(b"null").is_err());
        assert!(ConfigResponse::from_json(br#"{"configId":null,"config":1}"#).is_err());
    }

    #[test]
    fn encode_raw_matches_serde() {
        for (id, raw) in [
            ("v1", &br#"{"a":[1,2,{"b":null}]}"#[..]),
            ("", b"null"),
            ("\u{1}\"\\/é", b"\"text\""),
        ] {
            let value: serde_json::Value = serde_json::from_slice(raw).unwrap();
            let expected = ConfigResponse::Config {
                config_id: id.into(),
                config: value,
            };
            let encoded = ConfigResponse::encode_raw(id, raw);
            assert_eq!(ConfigResponse::from_json(&encoded).unwrap(), expected);
            assert_eq!(encoded, expected.to_json());
        }
    }

    #[test]
    fn applied_request_rfc_examples() {
        let a = AppliedRequest::from_json(br#"{"configId":"97016dbe8bb4adff8f754ecbf24612f2"}"#)
            .unwrap();
        assert_eq!(a.config_id, "97016dbe8bb4adff8f754ecbf24612f2");
        assert_eq!(a.status_code, 200);
        assert!(a.is_success());
        assert_eq!(a.reason_phrase, None);
        let a = AppliedRequest::from_json(
            br#"{"configId":"97016dbe","statusCode":400,"reasonPhrase":"WPA2 is not supported"}"#,
        )
        .unwrap();
        assert_eq!(a.status_code, 400);
        assert!(!a.is_success());
        assert_eq!(a.reason_phrase.as_deref(), Some("WPA2 is not supported"));
        for (code, ok) in [
            (199, false),
            (200, true),
            (204, true),
            (299, true),
            (300, false),
        ] {
            let json = format!(r#"{{"configId":"x","statusCode":{code}}}"#);
            assert_eq!(
                AppliedRequest::from_json(json.as_bytes())
                    .unwrap()
                    .is_success(),
                ok,
                "{code}"
            );
        }
    }

    #[test]
    fn applied_request_leniencies_and_errors() {
        let a = AppliedRequest::from_json(
            br#"{"configId":"x","statusCode":201.0,"reasonPhrase":null}"#,
        )
        .unwrap();
        assert_eq!((a.status_code, a.reason_phrase), (201, None));
        // `"statusCode": null` is "not set": the default, 200.
        let a = AppliedRequest::from_json(br#"{"configId":"x","statusCode":null}"#).unwrap();
        assert_eq!((a.status_code, a.reason_phrase), (200, None));
        for (payload, needle) in [
            (&b""[..], "`configId` is required"),
            (b"{}", "missing field `configId`"),
            (br#"{"configId":null}"#, "`configId` as a string"),
            (
                br#"{"configId":null,"statusCode":null,"reasonPhrase":null}"#,
                "`configId` as a string",
            ),
            (
                br#"{"configId":"x","statusCode":"200"}"#,
                "`statusCode` as an integer",
            ),
            (
                br#"{"configId":"x","statusCode":true}"#,
                "`statusCode` as an integer",
            ),
            (
                br#"{"configId":"x","statusCode":{}}"#,
                "`statusCode` as an integer",
            ),
            (
                br#"{"configId":"x","statusCode":null,"statusCode":400}"#,
                "duplicate field `statusCode`",
            ),
            (
                br#"{"configId":"x","statusCode":400,"statusCode":null}"#,
                "duplicate field `statusCode`",
            ),
            (br#"{"configId":"x","statusCode":200.5}"#, "not an integer"),
            (
                br#"{"configId":"x","statusCode":99999999999}"#,
                "out of range",
            ),
            (
                br#"{"configId":"x","statusCode":-99999999999}"#,
                "out of range",
            ),
            (
                br#"{"configId":"x","status":200}"#,
                "unknown field `status`",
            ),
            (
                br#"{"configId":"x","configId":"y"}"#,
                "duplicate field `configId`",
            ),
            (
                br#"{"configId":"x","reasonPhrase":5}"#,
                "`reasonPhrase` as a string",
            ),
            (b"null", "JSON object"),
        ] {
            let e = err(AppliedRequest::from_json(payload));
            assert!(
                e.contains(needle) && e.contains("applied request"),
                "{payload:?}: {e}"
            );
        }
    }

    /// The reports of Kaa's official Python client (kaaproject/mqtt-client-python,
    /// `kaa_mqtt_client/configuration.py`, `ConfigurationResponse.to_json`), byte
    /// for byte: `json.dumps` with its default separators.
    #[test]
    fn official_python_client_reports() {
        // `ConfigurationResponse(config_id)`: the library's success.
        let a = AppliedRequest::from_json(
            br#"{"configId": "97016dbe", "statusCode": null, "reasonPhrase": null}"#,
        )
        .unwrap();
        assert_eq!(a, AppliedRequest::applied("97016dbe"));
        assert!(a.is_success());
        // `apply_configuration`: a handler that raised is a 500 with `str(e)`.
        let a = AppliedRequest::from_json(
            br#"{"configId": "97016dbe", "statusCode": 500, "reasonPhrase": "'interval'"}"#,
        )
        .unwrap();
        assert_eq!(a, AppliedRequest::rejected("97016dbe", 500, "'interval'"));
        // examples/fleet_simulator: `ConfigurationResponse(c.config_id, 200)`.
        let a = AppliedRequest::from_json(
            br#"{"configId": "97016dbe", "statusCode": 200, "reasonPhrase": null}"#,
        )
        .unwrap();
        assert_eq!(a, AppliedRequest::applied("97016dbe"));
        // examples/simple_client: `ConfigurationResponse(c.config_id, 200, "applied")`.
        let a = AppliedRequest::from_json(
            br#"{"configId": "97016dbe", "statusCode": 200, "reasonPhrase": "applied"}"#,
        )
        .unwrap();
        assert!(a.is_success());
        assert_eq!(a.reason_phrase.as_deref(), Some("applied"));
        // A push without `configId` would make the library report `"configId":
        // null`: which configuration that was is unknown, so it stays an error.
        assert!(
            AppliedRequest::from_json(
                br#"{"configId": null, "statusCode": null, "reasonPhrase": null}"#
            )
            .is_err()
        );
    }

    #[test]
    fn applied_request_round_trip() {
        for a in [
            AppliedRequest::applied("v1"),
            AppliedRequest::rejected("v2", 400, "bad \"value\""),
        ] {
            assert_eq!(AppliedRequest::from_json(&a.to_json()).unwrap(), a);
        }
        assert_eq!(
            AppliedRequest::applied("v1").to_json(),
            br#"{"configId":"v1","statusCode":200}"#
        );
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ConfigRequest::from_json(&bytes);
            let _ = AppliedRequest::from_json(&bytes);
            let _ = ConfigResponse::from_json(&bytes);
        }

        #[test]
        fn json_shaped_input_never_panics(s in r#"[{}\[\]":,a-zA-Z0-9 .\-]{0,48}"#) {
            let _ = ConfigRequest::from_json(s.as_bytes());
            let _ = AppliedRequest::from_json(s.as_bytes());
            let _ = ConfigResponse::from_json(s.as_bytes());
        }
    }
}
