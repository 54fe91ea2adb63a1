//! Configuration deltas and partial subscription: **a kaa-rs extension of
//! 7/CMP**, opt-in per request. A device that never uses it sees exactly 7/CMP.
//!
//! 7/CMP lists both as open questions ("send only updates, e.g. using JSON
//! Patch", "subscribing to a part of configuration, e.g. using JSON Pointer");
//! no Kaa implementation answers them. This module is our answer: the resource,
//! the payloads and their codecs, the rule for choosing a patch or the whole
//! document, and the patch and pointer operations, on the maintained
//! `json-patch` crate (see [Why `json-patch`](#why-json-patch)).
//!
//! # The resource: `/config/json-patch[/<name>]`
//!
//! A device opts in by requesting **`/<token>/config/json-patch[/<name>]`**
//! instead of `/<token>/config/json[/<name>]`; `<name>` follows 7/CMP's rules
//! ([`crate::resource`]), and `json-patch/default` is the default
//! configuration. Answers go to `…/config/json-patch[/<name>][/<requestId>]/status`
//! (or `/error`), pushes to `…/config/json-patch[/<name>]/status`; applied
//! reports stay on 7/CMP's `/applied/json[/<name>]` and name the **whole**
//! configuration's ID, with or without pointers.
//!
//! Why a resource and not a request property: 7/CMP's request and response
//! schemas say `"additionalProperties": false`, so a `"delta": true` property
//! would be an invalid 7/CMP request (Kaa's CMX accepts no other property, and
//! ours answers such a request with a 400), and a patch in a response would be an invalid 7/CMP response
//! that a plain device's decoder refuses. A resource of its own keeps both
//! 7/CMP schemas untouched, keeps every byte on `/config/json` as it is, lets
//! the answer have a schema of its own, and tells a device at once whether the
//! server speaks the extension: a server that does not answers its request with
//! an error (an unknown resource), and the device falls back to
//! `/config/json`.
//!
//! The payloads' JSON schemas are `schemas/kaa-rs-config-patch-request.schema.json`
//! and `schemas/kaa-rs-config-patch-response.schema.json` in this crate
//! (`tests/rfc_schema.rs` checks the codecs against them).
//!
//! # The request ([`DeltaRequest`])
//!
//! ```json
//! {"configId": "<the config ID the device holds>", "observe": true, "pointers": ["/network", "/display/brightness"]}
//! ```
//!
//! - `configId` and `observe` mean what they mean in 7/CMP. `configId` is also
//!   **the base**: the configuration a patch would start from. It is always the
//!   whole configuration's ID, with or without pointers.
//! - `pointers` (optional): RFC 6901 JSON Pointers; the device watches only
//!   these parts. 1 to [`MAX_POINTERS`] distinct pointers of at most
//!   [`MAX_POINTER_LEN`] bytes each. Absent (or `null`): the whole
//!   configuration.
//!
//! The leniencies of 7/CMP's request carry over: an empty payload or `null` is
//! `{}`, and a property that is `null` is absent. Anything else unknown is an
//! error.
//!
//! # The answer ([`DeltaResponse`])
//!
//! | shape | when |
//! |---|---|
//! | `{}` | the request's `configId` is the current configuration's |
//! | `{"configId", "config"}` (7/CMP's shape) | the whole document: the request has no `configId` (first request), the server does not hold that base, the configuration is absent (`configId: ""`), or the patch would not be clearly smaller (see [`answer`]) |
//! | `{"configId", "baseConfigId", "patch"}` | an RFC 6902 patch that turns the configuration `baseConfigId` into the configuration `configId` |
//!
//! With `pointers`, the document is not the configuration but its **view**
//! ([`view`]): a JSON object with one member per pointer that resolves in the
//! configuration, the pointer string as the key and the part as the value
//! (`{"/network": {…}, "/display/brightness": 80}`); a pointer that does not
//! resolve has no member. The answer then also carries **`viewId`**, the
//! config ID ([`crate::canonical`]) of the view, and `config` / `patch` are the
//! view / a patch of the view. `configId` and `baseConfigId` still name whole
//! configurations. A patch with no operation (`"patch": []`) says "a new
//! configuration, and none of your parts changed"; the server pushes to a
//! device with pointers only when one of its parts changed.
//!
//! Why a view keyed by pointer rather than the configuration pruned to the
//! watched parts: a pruned array would renumber its elements (`/rules/3`
//! alone is not an array of one), and a pruned document could not tell a
//! missing part from a part that is an empty object. Keyed by pointer, every
//! part has one place, the patch of a view is an ordinary RFC 6902 patch, and
//! the view has a config ID of its own to check.
//!
//! # What the device checks
//!
//! After applying a patch the device computes the config ID of the result
//! ([`crate::canonical::config_id_of`]) and compares it with `configId` (with
//! pointers: `viewId`). On a mismatch, a patch that does not apply, or a
//! `baseConfigId` that is not what it holds (it missed a push), it asks again:
//! with its `configId` for a base mismatch, without one (the whole document)
//! when the result is wrong. A whole document is taken as sent. The
//! [`crate::device::Device`] state machine does all of this.
//!
//! # Patches the server sends
//!
//! The server sends only `add`, `remove` and `replace` operations (what
//! [`diff`] produces). A device accepts `move` and `test` as well; a `copy`
//! operation is refused when decoding ([`DeltaResponse::from_json`]): it is
//! the one operation whose result can grow without bound from a short payload
//! (copying the root into itself doubles the document).
//!
//! # Why `json-patch`
//!
//! - **`json-patch`** (idubrov/json-patch, MIT/Apache-2.0, the most used RFC 6902
//!   crate): `diff`, atomic `patch`, RFC 7396 merge, serde types for every
//!   operation; its pointers are `jsonptr`'s, which it re-exports. Depends only
//!   on serde, serde_json, thiserror and `jsonptr`: nothing that does I/O.
//!   Its `diff` is structural (no array moves), which is the shape of our
//!   configurations' changes and keeps patches plain.
//! - **`jsonptr`** (chanced/jsonptr): RFC 6901 parsing with validation
//!   (escapes, leading `/`), resolution into `serde_json::Value`. Used here for
//!   the request's pointers, so pointers and patch paths follow one grammar.
//! - `serde_json::Value::pointer`: resolution only, and it does not reject an
//!   invalid pointer (`~2`, no leading `/`), which a device must hear about.
//! - `treediff`: a generic tree diff that would leave us to turn its callbacks
//!   into RFC 6902 operations by hand.
//!
//! ```
//! use kaa_cmp::delta::{self, DeltaRequest, DeltaResponse};
//! use kaa_cmp::canonical::config_id_of;
//! use serde_json::json;
//!
//! let schedule: Vec<String> = (6..22).map(|h| format!("{h:02}:30 boil 95°C")).collect();
//! let v1 = json!({"rate": 5, "mode": "AP", "ssid": "Smart Teapot", "schedule": schedule});
//! let mut v2 = v1.clone();
//! v2["rate"] = json!(6);
//! let (id1, id2) = (config_id_of(&v1), config_id_of(&v2));
//!
//! // The device holds v1 and asks on /config/json-patch.
//! let payload = format!(r#"{{"configId":"{id1}","observe":true}}"#);
//! let request = DeltaRequest::from_json(payload.as_bytes())?;
//! // The server holds v1 too: a patch.
//! let answer = delta::answer(request.config_id.as_deref(), request.pointers.as_deref(), &id2, &v2, Some(&v1));
//! let payload = answer.to_json();
//! assert_eq!(
//!     String::from_utf8(payload.clone()).unwrap(),
//!     format!(r#"{{"configId":"{id2}","baseConfigId":"{id1}","patch":[{{"op":"replace","path":"/rate","value":6}}]}}"#)
//! );
//! // The device applies it and checks the config ID.
//! let DeltaResponse::Patch { config_id, patch, .. } = DeltaResponse::from_json(&payload)? else { unreachable!() };
//! let patched = delta::apply(&v1, &patch).unwrap();
//! assert_eq!(config_id_of(&patched), config_id);
//!
//! // A device that watches only the rate gets its view.
//! let pointers = [delta::parse_pointer("/rate").unwrap()];
//! let answer = delta::answer(None, Some(&pointers), &id2, &v2, None);
//! assert!(matches!(answer, DeltaResponse::Config { ref config, view_id: Some(_), .. } if *config == json!({"/rate": 6})));
//! # Ok::<(), kaa_cmp::message::PayloadError>(())
//! ```

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use json_patch::PatchOperation;
pub use json_patch::jsonptr::PointerBuf;
use serde::de::Deserializer;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical::{ABSENT_CONFIG_ID, config_id_of};
use crate::message::{MessageKind, PayloadError};
use crate::resource::{CONFIG_JSON, ResourceError, canonical_config_name, validate_config_name};

/// The delta resource, default configuration: `/config/json-patch`.
pub const CONFIG_JSON_PATCH: &str = "/config/json-patch";
/// The most pointers one request may name.
pub const MAX_POINTERS: usize = 32;
/// The longest pointer, in bytes.
pub const MAX_POINTER_LEN: usize = 1024;

/// A JSON Patch (RFC 6902): the operations, in order.
pub type Patch = Vec<PatchOperation>;

// ---------------------------------------------------------------------------
// Resource path
// ---------------------------------------------------------------------------

/// A parsed delta resource path, `/config/json-patch[/<name>]`, borrowing its
/// name. (A separate type from [`crate::resource::ResourcePath`], so that code
/// matching 7/CMP's resources is unchanged by the extension.)
///
/// ```
/// use kaa_cmp::delta::DeltaPath;
/// let path = DeltaPath::parse("/config/json-patch/network")?;
/// assert_eq!(path.config_name(), Some("network"));
/// assert_eq!(DeltaPath::parse("/config/json-patch/default")?.config_name(), None);
/// assert_eq!(DeltaPath::new(None)?.to_string(), "/config/json-patch");
/// assert!(DeltaPath::parse("/config/json").is_err());
/// assert!(DeltaPath::parse("/config/json-patch/a/b").is_err());
/// # Ok::<(), kaa_cmp::resource::ResourceError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeltaPath<'a> {
    name: Option<&'a str>,
}

impl<'a> DeltaPath<'a> {
    /// Parses `/config/json-patch[/<name>]`. Strict: no trailing `/`, no extra
    /// levels, a valid name.
    pub fn parse(path: &'a str) -> Result<Self, ResourceError> {
        let unknown = || ResourceError::UnknownResource {
            path: path.to_owned(),
        };
        let rest = path.strip_prefix(CONFIG_JSON_PATCH).ok_or_else(unknown)?;
        if rest.is_empty() {
            return Ok(DeltaPath { name: None });
        }
        let name = rest.strip_prefix('/').ok_or_else(unknown)?;
        if name.is_empty() || name.contains('/') {
            return Err(unknown());
        }
        validate_config_name(name)?;
        Ok(DeltaPath { name: Some(name) })
    }

    /// The delta resource for `name` (`None`: the default configuration).
    pub fn new(name: Option<&'a str>) -> Result<Self, ResourceError> {
        if let Some(name) = name {
            validate_config_name(name)?;
        }
        Ok(DeltaPath { name })
    }

    /// The name as written in the path.
    pub fn name(&self) -> Option<&'a str> {
        self.name
    }

    /// The configuration name, `None` for the default configuration (no name or
    /// `default`).
    pub fn config_name(&self) -> Option<&'a str> {
        canonical_config_name(self.name)
    }

    /// The 7/CMP resource of the same configuration, `/config/json[/<name>]`.
    pub fn plain(&self) -> String {
        match self.name {
            Some(name) => format!("{CONFIG_JSON}/{name}"),
            None => CONFIG_JSON.to_owned(),
        }
    }
}

impl fmt::Display for DeltaPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(CONFIG_JSON_PATCH)?;
        if let Some(name) = self.name {
            write!(f, "/{name}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Pointers and views
// ---------------------------------------------------------------------------

/// Parses one RFC 6901 JSON Pointer (`""` is the whole document; otherwise it
/// starts with `/`, and `~` is only `~0` or `~1`), at most [`MAX_POINTER_LEN`]
/// bytes.
///
/// ```
/// use kaa_cmp::delta::parse_pointer;
/// assert_eq!(parse_pointer("/a~1b/0").unwrap().as_str(), "/a~1b/0");
/// assert!(parse_pointer("a").is_err());
/// assert!(parse_pointer("/a~2").is_err());
/// ```
pub fn parse_pointer(pointer: &str) -> Result<PointerBuf, String> {
    if pointer.len() > MAX_POINTER_LEN {
        return Err(format!("a pointer is longer than {MAX_POINTER_LEN} bytes"));
    }
    PointerBuf::parse(pointer).map_err(|e| format!("invalid JSON Pointer: {e}"))
}

/// The view of `config` through `pointers`: an object with one member per
/// pointer that resolves, keyed by the pointer string.
///
/// ```
/// use kaa_cmp::delta::{parse_pointer, view};
/// use serde_json::json;
/// let config = json!({"network": {"ssid": "x"}, "rules": [1, 2]});
/// let pointers = ["/network/ssid", "/rules/1", "/missing"].map(|p| parse_pointer(p).unwrap());
/// assert_eq!(view(&config, &pointers), json!({"/network/ssid": "x", "/rules/1": 2}));
/// ```
pub fn view(config: &Value, pointers: &[PointerBuf]) -> Value {
    let mut parts = serde_json::Map::new();
    for pointer in pointers {
        if let Ok(part) = pointer.resolve(config) {
            parts.insert(pointer.as_str().to_owned(), part.clone());
        }
    }
    Value::Object(parts)
}

fn document<'v>(config: &'v Value, pointers: Option<&[PointerBuf]>) -> Cow<'v, Value> {
    match pointers {
        Some(pointers) => Cow::Owned(view(config, pointers)),
        None => Cow::Borrowed(config),
    }
}

// ---------------------------------------------------------------------------
// Diff, apply, answer
// ---------------------------------------------------------------------------

/// The patch from `base` to `new` (`json_patch::diff`): `add`, `remove` and
/// `replace` operations only.
pub fn diff(base: &Value, new: &Value) -> Patch {
    json_patch::diff(base, new).0
}

/// Why a patch could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// An operation does not apply to the document (a missing path, a failed
    /// `test`, …); nothing was changed.
    #[error("the patch does not apply: {0}")]
    Apply(String),
    /// The patch applied, but the result's config ID is not the announced one.
    #[error("the patched document has config ID {actual}, not {expected}")]
    ConfigIdMismatch {
        /// The ID the answer announced (`configId`, or `viewId` with pointers).
        expected: String,
        /// The config ID of the result.
        actual: String,
    },
    /// The answer is a view (`viewId`) where the whole configuration was asked
    /// for, or the other way round: the server does not know the device's
    /// pointers (it lost the subscription).
    #[error("the answer does not match the pointers the device watches")]
    ShapeMismatch,
    /// The patch starts from another configuration than the one the device holds.
    #[error("the patch starts from configuration {base:?}, the device holds {held:?}")]
    BaseMismatch {
        /// The answer's `baseConfigId`.
        base: String,
        /// What the device holds (`None`: nothing).
        held: Option<String>,
    },
}

/// Applies `patch` to a copy of `base` and returns the result; `base` is left
/// as it is.
pub fn apply(base: &Value, patch: &[PatchOperation]) -> Result<Value, DeltaError> {
    let mut doc = base.clone();
    // On an error the copy is dropped, so the undo `json_patch::patch` would do
    // is not needed.
    json_patch::patch_unsafe(&mut doc, patch).map_err(|e| DeltaError::Apply(e.to_string()))?;
    Ok(doc)
}

/// Checks that `doc` has the config ID `expected`.
pub fn verify(expected: &str, doc: &Value) -> Result<(), DeltaError> {
    let actual = config_id_of(doc);
    if actual == expected {
        Ok(())
    } else {
        Err(DeltaError::ConfigIdMismatch {
            expected: expected.to_owned(),
            actual,
        })
    }
}

/// The server's answer on the delta resource.
///
/// - `held`: the `configId` of the request, or for a push the configuration
///   the device is known to hold (`None`: nothing known).
/// - `pointers`: the request's pointers (`None`: the whole configuration).
/// - `current_id`, `current`: the endpoint's current configuration
///   ([`ABSENT_CONFIG_ID`] with `null` when it has none).
/// - `base`: the configuration `held` names, when the server has it.
///
/// The rule: `{}` when `held` is current; the whole document when nothing is
/// held, the base is unknown, either side is the absent configuration, or the
/// patch answer is longer than **half** the whole-document answer (so a patch
/// is sent only when it saves at least half the bytes); otherwise the patch.
/// With pointers, a patch with no operation (none of the watched parts changed)
/// is always the answer when the base is known; [`DeltaResponse::is_quiet`]
/// tells a server not to push it.
pub fn answer(
    held: Option<&str>,
    pointers: Option<&[PointerBuf]>,
    current_id: &str,
    current: &Value,
    base: Option<&Value>,
) -> DeltaResponse {
    if held == Some(current_id) {
        return DeltaResponse::Unchanged;
    }
    let target = document(current, pointers);
    let view_id = pointers.map(|_| config_id_of(&target));
    let whole = DeltaResponse::Config {
        config_id: current_id.to_owned(),
        view_id: view_id.clone(),
        config: target.as_ref().clone(),
    };
    let (Some(held), Some(base)) = (held, base) else {
        return whole;
    };
    if held == ABSENT_CONFIG_ID || current_id == ABSENT_CONFIG_ID {
        return whole;
    }
    let base_doc = document(base, pointers);
    let patch = diff(&base_doc, &target);
    let delta = DeltaResponse::Patch {
        config_id: current_id.to_owned(),
        base_config_id: held.to_owned(),
        view_id,
        patch,
    };
    if delta.is_quiet() || delta.to_json().len() * 2 <= whole.to_json().len() {
        delta
    } else {
        whole
    }
}

// ---------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------

/// A device's request to `/config/json-patch[/<name>]`. See the
/// [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeltaRequest<'a> {
    /// `configId`: the whole configuration the device holds, the base of a patch.
    pub config_id: Option<Cow<'a, str>>,
    /// `observe`, as in 7/CMP.
    pub observe: Option<bool>,
    /// `pointers`: the parts watched; `None` for the whole configuration.
    pub pointers: Option<Vec<PointerBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest<'a> {
    #[serde(rename = "configId", borrow, default)]
    config_id: Option<Cow<'a, str>>,
    #[serde(default)]
    observe: Option<bool>,
    #[serde(default)]
    pointers: Option<Vec<String>>,
}

impl<'a> DeltaRequest<'a> {
    /// Decodes a request payload.
    ///
    /// ```
    /// use kaa_cmp::delta::DeltaRequest;
    /// let r = DeltaRequest::from_json(br#"{"configId":"c1","pointers":["/network"]}"#)?;
    /// assert_eq!(r.config_id.as_deref(), Some("c1"));
    /// assert_eq!(r.pointers.unwrap()[0].as_str(), "/network");
    /// assert_eq!(DeltaRequest::from_json(b"")?, DeltaRequest::default());
    /// assert!(DeltaRequest::from_json(br#"{"pointers":["network"]}"#).is_err());
    /// assert!(DeltaRequest::from_json(br#"{"pointers":[]}"#).is_err());
    /// # Ok::<(), kaa_cmp::message::PayloadError>(())
    /// ```
    pub fn from_json(payload: &'a [u8]) -> Result<Self, PayloadError> {
        const KIND: MessageKind = MessageKind::DeltaRequest;
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Ok(DeltaRequest::default());
        }
        let raw: Option<RawRequest<'a>> =
            serde_json::from_slice(payload).map_err(|e| PayloadError::new(KIND, e))?;
        let Some(raw) = raw else {
            return Ok(DeltaRequest::default());
        };
        let pointers = match raw.pointers {
            None => None,
            Some(list) => {
                if list.is_empty() {
                    return Err(PayloadError::semantic(
                        KIND,
                        "`pointers` is empty; leave it out to watch the whole configuration",
                    ));
                }
                if list.len() > MAX_POINTERS {
                    return Err(PayloadError::semantic(
                        KIND,
                        &format!("`pointers` has more than {MAX_POINTERS} pointers"),
                    ));
                }
                let mut seen = BTreeSet::new();
                let mut pointers = Vec::with_capacity(list.len());
                for (i, p) in list.into_iter().enumerate() {
                    let pointer = parse_pointer(&p).map_err(|e| {
                        PayloadError::with_summary(
                            KIND,
                            format!("`pointers`[{i}]: {e}"),
                            format!("`pointers`[{i}] is not a valid JSON Pointer"),
                        )
                    })?;
                    if !seen.insert(p) {
                        return Err(PayloadError::semantic(
                            KIND,
                            &format!("`pointers`[{i}] repeats an earlier pointer"),
                        ));
                    }
                    pointers.push(pointer);
                }
                Some(pointers)
            }
        };
        Ok(DeltaRequest {
            config_id: raw.config_id,
            observe: raw.observe,
            pointers,
        })
    }

    /// The JSON payload.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::Map::new();
        if let Some(id) = &self.config_id {
            out.insert("configId".into(), Value::String(id.to_string()));
        }
        if let Some(observe) = self.observe {
            out.insert("observe".into(), Value::Bool(observe));
        }
        if let Some(pointers) = &self.pointers {
            out.insert(
                "pointers".into(),
                pointers
                    .iter()
                    .map(|p| Value::String(p.as_str().to_owned()))
                    .collect(),
            );
        }
        // A map of strings, booleans and arrays always serializes.
        serde_json::to_vec(&out).unwrap_or_default()
    }

    /// An owned copy.
    pub fn into_owned(self) -> DeltaRequest<'static> {
        DeltaRequest {
            config_id: self.config_id.map(|c| Cow::Owned(c.into_owned())),
            observe: self.observe,
            pointers: self.pointers,
        }
    }
}

// ---------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------

/// The server's answer on `/config/json-patch[/<name>]`, as a response or a
/// push. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaResponse {
    /// `{}`: the configuration the device named is current.
    Unchanged,
    /// `{"configId", "viewId"?, "config"}`: the whole document (the view with
    /// pointers).
    Config {
        /// `configId`: the whole configuration's ID.
        config_id: String,
        /// `viewId`: the config ID of the view; present when the request had
        /// pointers.
        view_id: Option<String>,
        /// `config`: the configuration, or its view.
        config: Value,
    },
    /// `{"configId", "baseConfigId", "viewId"?, "patch"}`: an RFC 6902 patch.
    Patch {
        /// `configId`: the ID of the configuration the patch leads to.
        config_id: String,
        /// `baseConfigId`: the ID of the configuration the patch starts from.
        base_config_id: String,
        /// `viewId`: the config ID of the patched view; present when the
        /// request had pointers.
        view_id: Option<String>,
        /// `patch`: the operations.
        patch: Patch,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResponse {
    #[serde(rename = "configId", default)]
    config_id: Option<String>,
    #[serde(rename = "baseConfigId", default)]
    base_config_id: Option<String>,
    #[serde(rename = "viewId", default)]
    view_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    config: Option<Value>,
    #[serde(default)]
    patch: Option<Patch>,
}

/// `config` may be `null` (the absent configuration): present is `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl DeltaResponse {
    /// True for a patch with no operation: a new configuration, none of the
    /// watched parts changed. Not worth a push.
    pub fn is_quiet(&self) -> bool {
        matches!(self, DeltaResponse::Patch { patch, .. } if patch.is_empty())
    }

    /// The ID the device checks the resulting document against: `viewId` when
    /// present, else `configId`; `None` for `{}`.
    pub fn document_id(&self) -> Option<&str> {
        match self {
            DeltaResponse::Unchanged => None,
            DeltaResponse::Config {
                config_id, view_id, ..
            }
            | DeltaResponse::Patch {
                config_id, view_id, ..
            } => Some(view_id.as_deref().unwrap_or(config_id)),
        }
    }

    /// Decodes an answer strictly: `{}`, or `configId` with exactly one of
    /// `config` and `patch`; `baseConfigId` with `patch` only; no `copy`
    /// operation.
    ///
    /// ```
    /// use kaa_cmp::delta::DeltaResponse;
    /// assert_eq!(DeltaResponse::from_json(b"{}")?, DeltaResponse::Unchanged);
    /// let r = DeltaResponse::from_json(br#"{"configId":"c2","baseConfigId":"c1","patch":[{"op":"remove","path":"/a"}]}"#)?;
    /// assert!(matches!(r, DeltaResponse::Patch { ref patch, .. } if patch.len() == 1));
    /// assert!(DeltaResponse::from_json(br#"{"configId":"c2","patch":[]}"#).is_err());
    /// assert!(DeltaResponse::from_json(br#"{"configId":"c2","baseConfigId":"c1","patch":[{"op":"copy","from":"","path":"/a"}]}"#).is_err());
    /// # Ok::<(), kaa_cmp::message::PayloadError>(())
    /// ```
    pub fn from_json(payload: &[u8]) -> Result<Self, PayloadError> {
        const KIND: MessageKind = MessageKind::DeltaResponse;
        let raw: RawResponse =
            serde_json::from_slice(payload).map_err(|e| PayloadError::new(KIND, e))?;
        let bad = |detail: &str| Err(PayloadError::semantic(KIND, detail));
        match raw {
            RawResponse {
                config_id: None,
                base_config_id: None,
                view_id: None,
                config: None,
                patch: None,
            } => Ok(DeltaResponse::Unchanged),
            RawResponse {
                config_id: Some(config_id),
                base_config_id: None,
                view_id,
                config: Some(config),
                patch: None,
            } => Ok(DeltaResponse::Config {
                config_id,
                view_id,
                config,
            }),
            RawResponse {
                config_id: Some(config_id),
                base_config_id: Some(base_config_id),
                view_id,
                config: None,
                patch: Some(patch),
            } => {
                if patch.iter().any(|op| matches!(op, PatchOperation::Copy(_))) {
                    return bad("a `copy` operation is not accepted in a configuration patch");
                }
                Ok(DeltaResponse::Patch {
                    config_id,
                    base_config_id,
                    view_id,
                    patch,
                })
            }
            RawResponse {
                config_id: None, ..
            } => bad("`configId` is required unless the answer is `{}`"),
            RawResponse {
                config: Some(_),
                patch: Some(_),
                ..
            } => bad("`config` and `patch` are exclusive"),
            RawResponse {
                config: Some(_), ..
            } => bad("`baseConfigId` comes with `patch` only"),
            RawResponse { patch: Some(_), .. } => bad("`patch` needs `baseConfigId`"),
            RawResponse { .. } => bad("`configId` needs `config` or `patch`"),
        }
    }

    /// The JSON payload.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, `Value`s and patch operations always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl Serialize for DeltaResponse {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DeltaResponse::Unchanged => s.serialize_map(Some(0))?.end(),
            DeltaResponse::Config {
                config_id,
                view_id,
                config,
            } => {
                let mut map = s.serialize_map(None)?;
                map.serialize_entry("configId", config_id)?;
                if let Some(view_id) = view_id {
                    map.serialize_entry("viewId", view_id)?;
                }
                map.serialize_entry("config", config)?;
                map.end()
            }
            DeltaResponse::Patch {
                config_id,
                base_config_id,
                view_id,
                patch,
            } => {
                let mut map = s.serialize_map(None)?;
                map.serialize_entry("configId", config_id)?;
                map.serialize_entry("baseConfigId", base_config_id)?;
                if let Some(view_id) = view_id {
                    map.serialize_entry("viewId", view_id)?;
                }
                map.serialize_entry("patch", patch)?;
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::config_id_of;
    use proptest::prelude::*;
    use serde_json::json;

    fn ptrs(list: &[&str]) -> Vec<PointerBuf> {
        list.iter().map(|p| parse_pointer(p).unwrap()).collect()
    }

    #[test]
    fn request_round_trip_and_errors() {
        let r = DeltaRequest {
            config_id: Some("c\"1".into()),
            observe: Some(false),
            pointers: Some(ptrs(&["", "/a~1b/0"])),
        };
        assert_eq!(DeltaRequest::from_json(&r.to_json()).unwrap(), r);
        assert_eq!(DeltaRequest::default().to_json(), b"{}");
        for payload in [
            &b""[..],
            b" ",
            b"null",
            b"{}",
            br#"{"configId":null,"observe":null,"pointers":null}"#,
        ] {
            assert_eq!(
                DeltaRequest::from_json(payload).unwrap(),
                DeltaRequest::default(),
                "{payload:?}"
            );
        }
        for (payload, needle) in [
            (&br#"{"delta":true}"#[..], "unknown field `delta`"),
            (br#"{"pointers":"/a"}"#, "invalid type"),
            (br#"{"pointers":["/a","/a"]}"#, "repeats"),
            (br#"{"pointers":["a"]}"#, "`pointers`[0]"),
            (br#"{"pointers":["/a","/b~"]}"#, "`pointers`[1]"),
            (br#"{"pointers":[]}"#, "is empty"),
            (br#"{"observe":true,"observe":true}"#, "duplicate field"),
            (br#"[1]"#, "invalid type"),
        ] {
            let e = DeltaRequest::from_json(payload).unwrap_err();
            assert!(e.to_string().contains(needle), "{payload:?}: {e}");
            assert!(e.to_string().contains("configuration-delta request"), "{e}");
        }
        let many = format!(
            r#"{{"pointers":[{}]}}"#,
            (0..=MAX_POINTERS)
                .map(|i| format!("\"/{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(
            DeltaRequest::from_json(many.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("more than")
        );
        let long = format!(r#"{{"pointers":["/{}"]}}"#, "a".repeat(MAX_POINTER_LEN));
        assert!(DeltaRequest::from_json(long.as_bytes()).is_err());
        // The summary quotes nothing from the payload.
        let e = DeltaRequest::from_json(br#"{"pointers":["s3cr3t"]}"#).unwrap_err();
        assert!(!e.summary().contains("s3cr3t"), "{}", e.summary());
    }

    #[test]
    fn response_shapes() {
        let cases = [
            (DeltaResponse::Unchanged, "{}"),
            (
                DeltaResponse::Config {
                    config_id: "c1".into(),
                    view_id: None,
                    config: json!({"a": 1}),
                },
                r#"{"configId":"c1","config":{"a":1}}"#,
            ),
            (
                DeltaResponse::Config {
                    config_id: "".into(),
                    view_id: None,
                    config: Value::Null,
                },
                r#"{"configId":"","config":null}"#,
            ),
            (
                DeltaResponse::Config {
                    config_id: "c1".into(),
                    view_id: Some("v1".into()),
                    config: json!({"/a": 1}),
                },
                r#"{"configId":"c1","viewId":"v1","config":{"/a":1}}"#,
            ),
            (
                DeltaResponse::Patch {
                    config_id: "c2".into(),
                    base_config_id: "c1".into(),
                    view_id: Some("v2".into()),
                    patch: diff(&json!({"/a": 1}), &json!({"/a": 2})),
                },
                r#"{"configId":"c2","baseConfigId":"c1","viewId":"v2","patch":[{"op":"replace","path":"/~1a","value":2}]}"#,
            ),
        ];
        for (response, text) in cases {
            assert_eq!(String::from_utf8(response.to_json()).unwrap(), text);
            assert_eq!(DeltaResponse::from_json(text.as_bytes()).unwrap(), response);
        }
        // The whole-document answer is 7/CMP's shape, byte for byte.
        let whole = DeltaResponse::Config {
            config_id: "c1".into(),
            view_id: None,
            config: json!({"rate": 5}),
        };
        assert_eq!(
            whole.to_json(),
            crate::message::ConfigResponse::Config {
                config_id: "c1".into(),
                config: json!({"rate": 5})
            }
            .to_json()
        );
        for (payload, needle) in [
            (&br#"{"configId":"c"}"#[..], "needs `config` or `patch`"),
            (br#"{"config":1}"#, "`configId` is required"),
            (br#"{"configId":"c","config":1,"patch":[]}"#, "exclusive"),
            (br#"{"configId":"c","baseConfigId":"b","config":1}"#, "with `patch` only"),
            (br#"{"configId":"c","patch":[]}"#, "needs `baseConfigId`"),
            (br#"{"configId":"c","baseConfigId":"b","patch":[{"op":"jump","path":""}]}"#, "unknown variant"),
            (br#"{"configId":"c","baseConfigId":"b","patch":[{"op":"add","path":"x","value":1}]}"#, "configuration-delta response"),
            (br#"{"configId":"c","extra":1,"config":1}"#, "unknown field `extra`"),
            (b"", "EOF"),
            (b"null", "invalid type"),
        ] {
            let e = DeltaResponse::from_json(payload).unwrap_err();
            assert!(e.to_string().contains(needle), "{payload:?}: {e}");
        }
    }

    #[test]
    fn answers_follow_the_rule() {
        let big: Value = (0..40)
            .map(|i| (format!("key{i}"), json!(i)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        let mut next = big.clone();
        next["key7"] = json!("seven");
        let (id1, id2) = (config_id_of(&big), config_id_of(&next));
        // Current: unchanged.
        assert_eq!(
            answer(Some(&id2), None, &id2, &next, Some(&next)),
            DeltaResponse::Unchanged
        );
        // First request, unknown base: the whole document.
        for (held, base) in [(None, None), (Some(id1.as_str()), None)] {
            assert!(matches!(
                answer(held, None, &id2, &next, base),
                DeltaResponse::Config { .. }
            ));
        }
        // Known base, one key: a patch.
        let a = answer(Some(&id1), None, &id2, &next, Some(&big));
        let DeltaResponse::Patch {
            ref patch,
            ref base_config_id,
            ..
        } = a
        else {
            panic!("{a:?}")
        };
        assert_eq!((patch.len(), base_config_id.as_str()), (1, id1.as_str()));
        // Everything changed: the patch is not clearly smaller.
        let other: Value = (0..40)
            .map(|i| (format!("key{i}"), json!(i + 1)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        assert!(matches!(
            answer(Some(&id1), None, &config_id_of(&other), &other, Some(&big)),
            DeltaResponse::Config { .. }
        ));
        // The absent configuration on either side: whole.
        assert_eq!(
            answer(Some(&id1), None, "", &Value::Null, Some(&big)).to_json(),
            br#"{"configId":"","config":null}"#
        );
        assert!(matches!(
            answer(Some(""), None, &id2, &next, Some(&Value::Null)),
            DeltaResponse::Config { .. }
        ));
        // Pointers: a view, its ID, and a quiet patch when the watched part did not change.
        let p = ptrs(&["/key1", "/nope"]);
        let a = answer(Some(&id1), Some(&p), &id2, &next, Some(&big));
        assert!(a.is_quiet(), "{a:?}");
        assert_eq!(
            a.document_id(),
            Some(config_id_of(&json!({"/key1": 1})).as_str())
        );
        // A small view: its whole document is shorter than a patch.
        let p = ptrs(&["/key7"]);
        let a = answer(Some(&id1), Some(&p), &id2, &next, Some(&big));
        let DeltaResponse::Config {
            config, view_id, ..
        } = a
        else {
            panic!("{a:?}")
        };
        assert_eq!(config, json!({"/key7": "seven"}));
        verify(view_id.as_deref().unwrap(), &config).unwrap();
        // A large one: a patch of the view.
        let p = ptrs(&["", "/key7"]);
        let a = answer(Some(&id1), Some(&p), &id2, &next, Some(&big));
        let DeltaResponse::Patch {
            patch,
            view_id,
            config_id,
            ..
        } = a
        else {
            panic!("{a:?}")
        };
        assert_eq!((config_id, patch.len()), (id2, 2));
        let viewed = apply(&view(&big, &p), &patch).unwrap();
        assert_eq!(viewed, json!({"": next, "/key7": "seven"}));
        verify(view_id.as_deref().unwrap(), &viewed).unwrap();
    }

    #[test]
    fn apply_and_verify_errors() {
        let base = json!({"a": 1});
        let bad: Patch = serde_json::from_value(json!([{"op": "remove", "path": "/b"}])).unwrap();
        assert!(matches!(apply(&base, &bad), Err(DeltaError::Apply(_))));
        let test: Patch =
            serde_json::from_value(json!([{"op": "test", "path": "/a", "value": 2}])).unwrap();
        assert!(matches!(apply(&base, &test), Err(DeltaError::Apply(_))));
        assert!(matches!(
            verify("00", &base),
            Err(DeltaError::ConfigIdMismatch { .. })
        ));
        verify(&config_id_of(&base), &base).unwrap();
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1.0e6f64..1.0e6).prop_map(Value::from),
            "[a-c~/é\"]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-d~/]{0,3}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A value and a mutation of it: most of it shared, as consecutive
    /// configurations are.
    fn base_and_new() -> impl Strategy<Value = (Value, Value)> {
        (json_value(), json_value(), json_value(), "[a-d]{1,2}").prop_map(
            |(base, other, extra, key)| {
                let mut new = base.clone();
                match &mut new {
                    Value::Object(map) => {
                        map.insert(key, extra);
                    }
                    Value::Array(items) => items.push(extra),
                    _ => new = other,
                }
                (base, new)
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn apply_of_diff_is_the_new_document((base, new) in base_and_new()) {
            let patch = diff(&base, &new);
            let patched = apply(&base, &patch).unwrap();
            prop_assert_eq!(&patched, &new);
            prop_assert_eq!(config_id_of(&patched), crate::canonical::config_id(&crate::canonical::canonical_json(&new)));
            // Through the wire too.
            let wire = DeltaResponse::Patch { config_id: config_id_of(&new), base_config_id: config_id_of(&base), view_id: None, patch };
            let DeltaResponse::Patch { patch, config_id, .. } = DeltaResponse::from_json(&wire.to_json()).unwrap() else { panic!() };
            let patched = apply(&base, &patch).unwrap();
            prop_assert!(verify(&config_id, &patched).is_ok());
        }

        #[test]
        fn apply_of_diff_between_unrelated_documents(base in json_value(), new in json_value()) {
            prop_assert_eq!(apply(&base, &diff(&base, &new)).unwrap(), new);
        }

        #[test]
        fn answers_lead_to_the_current_document((base, new) in base_and_new(), watch in proptest::collection::btree_set("(/[a-d]{1,2}){0,2}", 1..4)) {
            let watch: Vec<PointerBuf> = watch.iter().map(|p| parse_pointer(p).unwrap()).collect();
            for pointers in [None, Some(&watch[..])] {
                let (base_id, new_id) = (config_id_of(&base), config_id_of(&new));
                let held = document(&base, pointers).into_owned();
                let result = match answer(Some(&base_id), pointers, &new_id, &new, Some(&base)) {
                    DeltaResponse::Unchanged => { prop_assert_eq!(&base_id, &new_id); held }
                    DeltaResponse::Config { config, .. } => config,
                    DeltaResponse::Patch { patch, base_config_id, .. } => {
                        prop_assert_eq!(&base_config_id, &base_id);
                        apply(&held, &patch).unwrap()
                    }
                };
                let expected = document(&new, pointers).into_owned();
                prop_assert_eq!(&result, &expected);
            }
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = DeltaRequest::from_json(&bytes);
            let _ = DeltaResponse::from_json(&bytes);
        }
    }
}
