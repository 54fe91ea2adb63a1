use super::*;
use proptest::prelude::*;
use serde_json::json;

fn layer(name: &str, priority: i64, target: LayerTarget, patch: Value) -> Layer {
    Layer {
        app_version: "v1".into(),
        name: "default".into(),
        layer_name: name.into(),
        priority,
        target,
        patch,
        created: UnixMillis(1),
        updated: UnixMillis(2),
    }
}

fn base(doc: Value) -> EffectiveInputs {
    let c = Content::from_value(&doc);
    EffectiveInputs {
        base: Some((
            StoredConfig {
                name: ConfigName::default_name(),
                config_id: c.config_id,
                content: c.json,
                created: UnixMillis(1),
                updated: UnixMillis(1),
            },
            Source::Default,
        )),
        groups: BTreeSet::new(),
        own_patch: None,
        rolling: Vec::new(),
    }
}

fn stored(doc: &Value) -> StoredConfig {
    let c = Content::from_value(doc);
    StoredConfig {
        name: ConfigName::default_name(),
        config_id: c.config_id,
        content: c.json,
        created: UnixMillis(3),
        updated: UnixMillis(4),
    }
}

#[test]
fn an_own_patch_is_merged_last_over_the_layers() {
    let layers = vec![layer("a", 1, LayerTarget::All, json!({"x": "a", "y": 1}))];
    let name = ConfigName::default_name();
    let mut inputs = base(json!({"x": 0, "k": true}));
    inputs.own_patch = Some(stored(&json!({"x": "own", "k": null})));
    let (c, source) = compose(&name, &inputs, &layers).unwrap();
    assert_eq!(c.content, r#"{"x":"own","y":1}"#);
    assert_eq!(source, Source::Endpoint);
    assert_eq!(c.updated, UnixMillis(4));
    // Without layers, and without a base (merged over null).
    let (c, _) = compose(&name, &inputs, &[]).unwrap();
    assert_eq!(c.content, r#"{"x":"own"}"#);
    inputs.base = None;
    let (c, _) = compose(&name, &inputs, &[]).unwrap();
    assert_eq!(c.content, r#"{"x":"own"}"#);
    // Explain names the patch for what it decides.
    let mut doc = json!({"x": 0, "k": true});
    json_patch::merge(&mut doc, &json!({"x": "a", "y": 1}));
    json_patch::merge(&mut doc, &json!({"x": "own", "k": null}));
    let e = explain(
        &doc,
        &[
            (Decider::Default, json!({"x": 0, "k": true})),
            (Decider::Layer("a".into()), json!({"x": "a", "y": 1})),
            (Decider::EndpointPatch, json!({"x": "own", "k": null})),
        ],
    );
    let got: Vec<(String, Decider)> = e
        .iter()
        .map(|x| (x.pointer.clone(), x.decider.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("/x".into(), Decider::EndpointPatch),
            ("/y".into(), Decider::Layer("a".into())),
        ]
    );
    assert_eq!(replay(&e), doc);
}

#[test]
fn layers_merge_by_priority_then_name_and_own_configuration_wins() {
    let mut layers = vec![
        layer("b", 5, LayerTarget::All, json!({"x": "b"})),
        layer("a", 5, LayerTarget::All, json!({"x": "a", "y": 1})),
        layer("z", 1, LayerTarget::All, json!({"x": "z", "z": null})),
        layer("g", 9, LayerTarget::Group("site1".into()), json!({"y": 2})),
    ];
    order(&mut layers);
    let names: Vec<_> = layers.iter().map(|l| l.layer_name.as_str()).collect();
    assert_eq!(names, ["z", "a", "b", "g"]);
    let name = ConfigName::default_name();
    let inputs = base(json!({"x": 0, "z": 1, "k": true}));
    let (c, _) = compose(&name, &inputs, &layers).unwrap();
    assert_eq!(c.content, r#"{"k":true,"x":"b","y":1}"#);
    let mut member = inputs.clone();
    member.groups.insert("site1".into());
    let (c, _) = compose(&name, &member, &layers).unwrap();
    assert_eq!(c.content, r#"{"k":true,"x":"b","y":2}"#);
    // No layer: the base as it is; own configuration: untouched.
    assert_eq!(compose(&name, &inputs, &[]), inputs.base);
    let mut own = inputs.clone();
    own.base.as_mut().unwrap().1 = Source::Endpoint;
    assert_eq!(compose(&name, &own, &layers), own.base);
    // Nothing at all: nothing.
    assert_eq!(compose(&name, &EffectiveInputs::default(), &[]), None);
}

#[test]
fn explain_names_the_deciders() {
    let base_doc = json!({"a": {"b": 1, "c": 2}, "d": [1, 2], "e": {}});
    let p1 = json!({"a": {"b": 10}, "d": [3]});
    let p2 = json!({"a": {"c": null, "f": "x"}});
    let mut doc = base_doc.clone();
    json_patch::merge(&mut doc, &p1);
    json_patch::merge(&mut doc, &p2);
    let contributions = vec![
        (Decider::Default, base_doc),
        (Decider::Layer("l1".into()), p1),
        (Decider::Layer("l2".into()), p2),
    ];
    let e = explain(&doc, &contributions);
    let got: Vec<(String, Decider)> = e
        .iter()
        .map(|x| (x.pointer.clone(), x.decider.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("/a/b".into(), Decider::Layer("l1".into())),
            ("/a/f".into(), Decider::Layer("l2".into())),
            ("/d".into(), Decider::Layer("l1".into())),
            ("/e".into(), Decider::Default),
        ]
    );
    assert_eq!(replay(&e), doc);
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..5).prop_map(|n| json!(n)),
        "[a-c/~]{0,2}".prop_map(Value::String),
        prop::collection::vec((-3i64..3).prop_map(|n| json!(n)), 0..3).prop_map(Value::Array),
    ]
}

fn json_doc() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop::collection::btree_map("[ab/~]{1,2}", inner, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    })
}

proptest! {
    /// The explain output, replayed, rebuilds the effective configuration (the
    /// default, layers and an own configuration stored as a merge patch); every
    /// decider is one of the contributions.
    #[test]
    fn explain_replays_to_the_effective_configuration(
        base_doc in json_doc(),
        patches in prop::collection::vec((json_doc(), -2i64..3, any::<bool>()), 0..5),
        member in any::<bool>(),
        own_patch in prop::option::of(json_doc().prop_filter("a patch is an object", Value::is_object)),
    ) {
        let mut layers: Vec<Layer> = patches
            .iter()
            .enumerate()
            .map(|(i, (p, prio, grouped))| {
                let target = if *grouped { LayerTarget::Group("g".into()) } else { LayerTarget::All };
                layer(&format!("l{i}"), *prio, target, p.clone())
            })
            .collect();
        order(&mut layers);
        let mut inputs = base(base_doc.clone());
        if member {
            inputs.groups.insert("g".into());
        }
        inputs.own_patch = own_patch.as_ref().map(stored);
        let name = ConfigName::default_name();
        let (effective, _) = compose(&name, &inputs, &layers).unwrap();
        let doc: Value = serde_json::from_str(&effective.content).unwrap();
        let mut contributions = vec![(Decider::Default, base_doc)];
        for l in layers.iter().filter(|l| l.target.applies(&inputs.groups)) {
            contributions.push((Decider::Layer(l.layer_name.clone()), l.patch.clone()));
        }
        if let Some(p) = &own_patch {
            contributions.push((Decider::EndpointPatch, p.clone()));
        }
        let explained = explain(&doc, &contributions);
        prop_assert_eq!(replay(&explained), doc);
    }
}

/// A layer rollout's new version replaces the stored layer of its name (or is
/// added) for the endpoints its cohort serves, in merge order; the others keep the
/// stored layers.
#[test]
fn rolling_layers_replace_their_stored_versions_in_the_cohort() {
    let mut stored = vec![
        layer("a", 0, LayerTarget::All, json!({"x": "a"})),
        layer("wifi", 5, LayerTarget::All, json!({"x": "old"})),
    ];
    order(&mut stored);
    let new = layer("wifi", -1, LayerTarget::All, json!({"x": "new", "y": 1}));
    let everyone = RollingLayer {
        rollout_id: "r".into(),
        step: 0,
        served_bp: crate::rollout::COHORT_BUCKETS,
        layer: new.clone(),
    };
    let nobody = RollingLayer {
        served_bp: 0,
        ..everyone.clone()
    };
    assert!(rolling_for(&[nobody], "v1", "default", "e1").is_empty());
    assert!(rolling_for(std::slice::from_ref(&everyone), "v2", "default", "e1").is_empty());
    let rolling = rolling_for(&[everyone], "v1", "default", "e1");
    assert_eq!(rolling, vec![new.clone()]);
    let composed = with_rolling(&stored, &rolling);
    // The new version's priority (-1) puts it first now: "a" wins x.
    let names: Vec<&str> = composed.iter().map(|l| l.layer_name.as_str()).collect();
    assert_eq!(names, ["wifi", "a"]);
    let mut inputs = base(json!({"x": 0}));
    inputs.rolling = rolling;
    let name = ConfigName::default_name();
    let (c, _) = compose(&name, &inputs, &stored).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&c.content).unwrap(),
        json!({"x": "a", "y": 1})
    );
    inputs.rolling.clear();
    let (c, _) = compose(&name, &inputs, &stored).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&c.content).unwrap(),
        json!({"x": "old"})
    );
    // A rolling layer with no stored version is added.
    assert_eq!(with_rolling(&[], std::slice::from_ref(&new)).len(), 1);
}
