//! Endpoint groups and layered configurations (issue #20): the pure part.
//!
//! # The model
//!
//! - An **endpoint group** is a named set of endpoints of one application version
//!   ([`GroupName`], same rule as config names). Groups hold no configuration.
//! - A **layer** belongs to an (application version, configuration name) and is a
//!   JSON Merge Patch (RFC 7396) with a `priority` (an integer) and a target: one
//!   group, or every endpoint of the application version ([`LayerTarget`]).
//!
//! # The effective configuration
//!
//! An endpoint's effective configuration `name` is ([`compose`]):
//!
//! 1. the **base**: the application version's default, or, while a rollout of that
//!    default is active and the endpoint is in the cohort it serves, the rollout's
//!    new configuration (so a layer is applied over what the rollout serves: the
//!    rollout changes the base, the layers stay on top of it, and an endpoint
//!    outside the cohort gets the same layers over the previous default);
//! 2. then every layer that targets the endpoint (every endpoint, or a group it is a
//!    member of), merged in **ascending priority**; layers of equal priority are
//!    merged in ascending order of their **layer name** (byte order), so the layer
//!    whose name sorts last wins a tie ([`order`]);
//! 3. then the endpoint's own configuration. Stored as a whole document (as before
//!    layers existed, and the default of the REST API), it is the effective
//!    configuration and no layer applies to it. Stored as a merge patch (an object;
//!    `Content-Type: application/merge-patch+json` on the REST PUT), it is merged
//!    last, over the base and the layers, and follows their changes.
//!
//! With no default and no whole own configuration, the layers (and an own patch)
//! are merged over `null` (RFC 7396: an object patch turns it into an object).
//! With no default, no own configuration and no layer there is no effective
//! configuration.
//!
//! The config ID of a layered configuration is derived from its content like any
//! other ([`crate::model::Content`]), so a layer change that leaves an endpoint's
//! document as it was changes nothing for that endpoint and announces nothing.
//!
//! # Explain
//!
//! [`explain`] lists, for every leaf of the effective document (a scalar, an array —
//! merge patches replace arrays whole — or an empty object; the root pointer `""`
//! when the document is not an object), its value and the source that decided it:
//! the last contribution (base, then layers in merge order, then an own patch) whose
//! patch reaches that pointer (names it, or replaces one of its ancestors). Setting each value at its
//! pointer, in the order listed, rebuilds the document ([`replay`]).

use std::collections::BTreeSet;

use json_patch::jsonptr::PointerBuf;
use serde_json::{Map, Value};

use kaa_ism::UnixMillis;

use crate::model::{ConfigName, Content, NameError, Source, StoredConfig};

/// A validated group or layer name: `^[a-zA-Z0-9_-]+$`, 1 to
/// [`crate::model::MAX_NAME_LEN`] bytes (the config name rule).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName(String);

impl GroupName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        // Same rule as config names.
        let name = ConfigName::new(name)?;
        Ok(Self(name.as_str().to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for GroupName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which endpoints a layer applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LayerTarget {
    /// Every endpoint of the application version.
    All,
    /// The members of this group.
    Group(String),
}

impl LayerTarget {
    /// The stored column value: `""` for every endpoint (group names are never empty).
    pub fn column(&self) -> &str {
        match self {
            LayerTarget::All => "",
            LayerTarget::Group(g) => g,
        }
    }

    /// From [`LayerTarget::column`].
    pub fn from_column(s: String) -> Self {
        if s.is_empty() {
            LayerTarget::All
        } else {
            LayerTarget::Group(s)
        }
    }

    /// Whether the layer applies to an endpoint that is a member of `groups`.
    pub fn applies(&self, groups: &BTreeSet<String>) -> bool {
        match self {
            LayerTarget::All => true,
            LayerTarget::Group(g) => groups.contains(g),
        }
    }
}

/// A layer of an (application version, configuration name).
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// The application version.
    pub app_version: String,
    /// The configuration name.
    pub name: String,
    /// The layer's name, unique per (application version, configuration name).
    pub layer_name: String,
    /// Merge order: ascending; ties by `layer_name` ([`order`]).
    pub priority: i64,
    /// Which endpoints it applies to.
    pub target: LayerTarget,
    /// The JSON Merge Patch (RFC 7396).
    pub patch: Value,
    /// When the layer was first written.
    pub created: UnixMillis,
    /// When it last changed.
    pub updated: UnixMillis,
}

/// Sorts layers into merge order: ascending priority, then ascending layer name.
pub fn order(layers: &mut [Layer]) {
    layers.sort_by(|a, b| {
        (a.priority, a.layer_name.as_str()).cmp(&(b.priority, b.layer_name.as_str()))
    });
}

/// An active layer rollout (see [`crate::rollout::LayerRollout`]) as composition
/// applies it: an endpoint whose cohort bucket is below `served_bp` gets `layer`
/// (the new version) in place of the stored layer of that name (or in addition,
/// when there is none); the others keep the layers as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RollingLayer {
    /// The rollout.
    pub rollout_id: String,
    /// Its current step (for explain).
    pub step: usize,
    /// Buckets below this are served the new version.
    pub served_bp: u32,
    /// The new version (its `app_version` and `name` are the rollout's).
    pub layer: Layer,
}

impl RollingLayer {
    /// The layer rollout `r` serving the buckets below `served_bp` (`None` for a
    /// rollout of the default).
    pub fn at(r: &crate::rollout::Rollout, served_bp: u32) -> Option<Self> {
        let l = r.layer.as_ref()?;
        Some(Self {
            rollout_id: r.rollout_id.clone(),
            step: r.step,
            served_bp,
            layer: Layer {
                app_version: r.app_version.clone(),
                name: r.name.clone(),
                layer_name: l.layer_name.clone(),
                priority: l.priority,
                target: l.group.clone().map_or(LayerTarget::All, LayerTarget::Group),
                patch: l.patch.clone(),
                created: UnixMillis(r.created_ms),
                updated: UnixMillis(r.updated_ms),
            },
        })
    }

    /// The layer rollout `r` as it serves now ([`crate::rollout::Rollout::served_bp`]).
    pub fn of(r: &crate::rollout::Rollout) -> Option<Self> {
        Self::at(r, r.served_bp())
    }

    /// Whether it serves its new version to `endpoint_id`.
    pub fn serves(&self, endpoint_id: &str) -> bool {
        crate::rollout::served_bucket_limit(&self.rollout_id, self.served_bp, endpoint_id)
    }
}

/// The new versions of the `rolling` layers of (`app_version`, `name`) that serve
/// `endpoint_id` (what [`EffectiveInputs::rolling`] holds).
pub fn rolling_for(
    rolling: &[RollingLayer],
    app_version: &str,
    name: &str,
    endpoint_id: &str,
) -> Vec<Layer> {
    rolling
        .iter()
        .filter(|r| {
            r.layer.app_version == app_version && r.layer.name == name && r.serves(endpoint_id)
        })
        .map(|r| r.layer.clone())
        .collect()
}

/// `layers` (as stored, in merge order) with the layers of `rolling` in place of
/// the stored layers of their names (or added), in merge order again. Borrowed
/// when `rolling` is empty.
pub fn with_rolling<'a>(layers: &'a [Layer], rolling: &[Layer]) -> std::borrow::Cow<'a, [Layer]> {
    if rolling.is_empty() {
        return std::borrow::Cow::Borrowed(layers);
    }
    let mut out: Vec<Layer> = layers
        .iter()
        .filter(|l| !rolling.iter().any(|r| r.layer_name == l.layer_name))
        .cloned()
        .collect();
    out.extend(rolling.iter().cloned());
    order(&mut out);
    std::borrow::Cow::Owned(out)
}

/// The inputs of one endpoint's effective configuration besides the layers: what
/// the store answers today (the own configuration, or the default as served) and the
/// groups the endpoint is a member of (in its application version).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EffectiveInputs {
    /// The own whole configuration ([`Source::Endpoint`]) or the base
    /// ([`Source::Default`]: the default, or the active rollout's configuration for
    /// its served cohort).
    pub base: Option<(StoredConfig, Source)>,
    /// The endpoint's groups.
    pub groups: BTreeSet<String>,
    /// The endpoint's own configuration when it is stored as a merge patch (then
    /// `base` is the base): merged after the layers.
    pub own_patch: Option<StoredConfig>,
    /// The new versions of layers that active layer rollouts serve this endpoint
    /// ([`rolling_for`]): [`compose`] takes them in place of the stored versions.
    pub rolling: Vec<Layer>,
}

/// The effective configuration from `inputs` and the layers of its (application
/// version, name) in merge order (see the module docs). `name` names the result
/// when there is no base. The source is [`Source::Endpoint`] when an own
/// configuration (whole, or a patch) made it, else [`Source::Default`].
pub fn compose(
    name: &ConfigName,
    inputs: &EffectiveInputs,
    layers: &[Layer],
) -> Option<(StoredConfig, Source)> {
    if let Some((_, Source::Endpoint)) = &inputs.base {
        return inputs.base.clone();
    }
    let layers = with_rolling(layers, &inputs.rolling);
    let mut applicable = layers
        .iter()
        .filter(|l| l.target.applies(&inputs.groups))
        .peekable();
    if applicable.peek().is_none() && inputs.own_patch.is_none() {
        return inputs.base.clone();
    }
    let base = inputs.base.as_ref().map(|(c, _)| c);
    let mut doc = base
        .and_then(|c| serde_json::from_str::<Value>(&c.content).ok())
        .unwrap_or(Value::Null);
    let mut created = base.map(|c| c.created);
    let mut updated = base.map_or(UnixMillis(0), |c| c.updated);
    for layer in applicable {
        json_patch::merge(&mut doc, &layer.patch);
        created = Some(created.map_or(layer.created, |c| UnixMillis(c.0.min(layer.created.0))));
        updated = UnixMillis(updated.0.max(layer.updated.0));
    }
    let mut source = Source::Default;
    if let Some(p) = &inputs.own_patch {
        json_patch::merge(&mut doc, &patch_value(p));
        created = Some(created.map_or(p.created, |c| UnixMillis(c.0.min(p.created.0))));
        updated = UnixMillis(updated.0.max(p.updated.0));
        source = Source::Endpoint;
    }
    let content = Content::from_value(&doc);
    Some((
        StoredConfig {
            name: name.clone(),
            config_id: content.config_id,
            content: content.json,
            created: created.unwrap_or(updated),
            updated,
        },
        source,
    ))
}

/// A stored own patch as the merge patch it is (an object; anything unreadable is
/// the empty patch, which changes nothing).
pub fn patch_value(patch: &StoredConfig) -> Value {
    serde_json::from_str::<Value>(&patch.content)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| Value::Object(Map::new()))
}

/// Who decided a value of an effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decider {
    /// The application version's default.
    Default,
    /// An active rollout's configuration, served to this endpoint at this step.
    Rollout {
        /// The rollout.
        rollout_id: String,
        /// Its current step (zero-based).
        step: usize,
    },
    /// A layer.
    Layer(String),
    /// A layer's new version, served to this endpoint by a layer rollout at this
    /// step ([`RollingLayer`]).
    RollingLayer {
        /// The layer.
        layer_name: String,
        /// The layer rollout.
        rollout_id: String,
        /// Its current step (zero-based).
        step: usize,
    },
    /// The endpoint's own configuration (a whole document).
    Endpoint,
    /// The endpoint's own configuration stored as a merge patch.
    EndpointPatch,
}

/// One leaf of an explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct Explained {
    /// The RFC 6901 pointer.
    pub pointer: String,
    /// Its value.
    pub value: Value,
    /// Who decided it.
    pub decider: Decider,
}

/// Whether `patch`, merged at the root, reaches the value at `tokens`: it names that
/// pointer, or replaces (a non-object patch) the value at one of its ancestors.
fn reaches(patch: &Value, tokens: &[String]) -> bool {
    match patch {
        Value::Object(map) => match tokens.split_first() {
            None => true,
            Some((first, rest)) => map.get(first).is_some_and(|v| reaches(v, rest)),
        },
        _ => true,
    }
}

/// The leaves of `doc` with their token paths, in document order.
fn leaves(doc: &Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
    match doc {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                path.push(k.clone());
                leaves(v, path, out);
                path.pop();
            }
        }
        _ => out.push((path.clone(), doc.clone())),
    }
}

/// Explains `effective` (the document [`compose`] made) from its contributions in
/// merge order: `(decider, patch)`, the base first (its whole document as the
/// patch). An endpoint's own configuration is one contribution (everything is
/// decided by it).
pub fn explain(effective: &Value, contributions: &[(Decider, Value)]) -> Vec<Explained> {
    let mut out = Vec::new();
    leaves(effective, &mut Vec::new(), &mut out);
    out.into_iter()
        .map(|(tokens, value)| {
            let decider = contributions
                .iter()
                .rev()
                .find(|(_, patch)| reaches(patch, &tokens))
                .map_or(Decider::Default, |(d, _)| d.clone());
            Explained {
                pointer: PointerBuf::from_tokens(tokens.iter().map(String::as_str)).to_string(),
                value,
                decider,
            }
        })
        .collect()
}

/// Rebuilds a document from an explanation: every value set at its pointer.
pub fn replay(explained: &[Explained]) -> Value {
    let mut doc = Value::Null;
    for e in explained {
        let ptr = PointerBuf::parse(&e.pointer).unwrap_or_default();
        let tokens: Vec<String> = ptr.tokens().map(|t| t.decoded().into_owned()).collect();
        set(&mut doc, &tokens, e.value.clone());
    }
    doc
}

fn set(doc: &mut Value, tokens: &[String], value: Value) {
    match tokens.split_first() {
        None => *doc = value,
        Some((first, rest)) => {
            if !doc.is_object() {
                *doc = Value::Object(Map::new());
            }
            if let Value::Object(map) = doc {
                set(map.entry(first.clone()).or_insert(Value::Null), rest, value);
            }
        }
    }
}

/// An RFC 6902 JSON Patch from `before` to `after` (documents as canonical text;
/// `None`: no document, taken as `null`).
pub fn json_patch_between(before: Option<&str>, after: Option<&str>) -> Value {
    let parse = |s: Option<&str>| {
        s.and_then(|s| serde_json::from_str::<Value>(s).ok())
            .unwrap_or(Value::Null)
    };
    serde_json::to_value(json_patch::diff(&parse(before), &parse(after))).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests;
