//! Property tests of layered configurations (issue #20) through the engine on the
//! SQLite store: a dry run (of a layer write or deletion, a membership change, a
//! default, an endpoint configuration whole or as a merge patch, or a batch write)
//! predicts exactly the endpoints the same write then
//! announces, which are exactly the endpoints whose effective configuration the
//! write changed, every announcement carries the effective configuration read after it,
//! and the explain output of every endpoint, replayed, rebuilds its effective
//! configuration.

use std::collections::BTreeSet;
use std::sync::Arc;

use kaa_ecr::core::{AppVersions, Ecr, EffectiveChange, LayerChange};
use kaa_ecr::layers::{GroupName, Layer, LayerTarget, replay};
use kaa_ecr::model::{AppVersionName, ConfigName, EndpointId, Scope};
use kaa_ecr::store::{self, Precondition};
use kaa_ism::UnixMillis;
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

const ENDPOINTS: usize = 8;

#[derive(Debug, Clone)]
enum Op {
    PutLayer {
        layer: usize,
        priority: i64,
        target: Option<usize>,
        patch: Value,
    },
    DeleteLayer(usize),
    Members {
        group: usize,
        add: Vec<usize>,
        remove: Vec<usize>,
    },
    Default(Option<Value>),
    Own(usize, Option<Value>),
    Batch(Vec<usize>, Value),
    OwnPatch(usize, Value),
}

fn small_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..3).prop_map(|n| json!(n)),
        Just(Value::Null),
        (0i64..3).prop_map(|n| json!({"x": n})),
        (0i64..2).prop_map(|n| json!({"y": n, "x": null})),
    ]
}

fn patch() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop::sample::select(vec!["a", "b", "c"]),
        small_value(),
        0..3,
    )
    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

/// A document (nulls in it are values, not deletions).
fn doc() -> impl Strategy<Value = Value> {
    patch()
}

fn op() -> impl Strategy<Value = Op> {
    let ep = 0..ENDPOINTS;
    prop_oneof![
        3 => (0usize..3, 0i64..3, prop::option::of(0usize..2), patch()).prop_map(
            |(layer, priority, target, patch)| Op::PutLayer { layer, priority, target, patch }
        ),
        1 => (0usize..3).prop_map(Op::DeleteLayer),
        2 => (
            0usize..2,
            prop::collection::vec(ep.clone(), 0..4),
            prop::collection::vec(ep.clone(), 0..3)
        )
            .prop_map(|(group, add, remove)| Op::Members { group, add, remove }),
        1 => prop::option::of(doc()).prop_map(Op::Default),
        1 => (ep.clone(), prop::option::of(doc())).prop_map(|(e, d)| Op::Own(e, d)),
        1 => (prop::collection::vec(ep.clone(), 1..4), doc()).prop_map(|(es, d)| Op::Batch(es, d)),
        2 => (ep, patch()).prop_map(|(e, p)| Op::OwnPatch(e, p)),
    ]
}

fn e(i: usize) -> EndpointId {
    EndpointId::new(format!("e{i}")).unwrap()
}

fn drain(rx: &mut UnboundedReceiver<EffectiveChange>) -> Vec<EffectiveChange> {
    let mut out = Vec::new();
    while let Ok(c) = rx.try_recv() {
        out.push(c);
    }
    out
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ecr.db").display());
    let store = store::open(&url).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let ecr = Arc::new(Ecr::new(store, AppVersions::open(), Some(tx)));
    let app = AppVersionName::new("v1").unwrap();
    let name = ConfigName::default_name();
    let now = UnixMillis(1_000);
    for i in 0..ENDPOINTS {
        ecr.learn_endpoint(&e(i), &app).await.unwrap();
    }
    for g in ["g0", "g1"] {
        ecr.create_group(&app, &GroupName::new(g).unwrap(), now)
            .await
            .unwrap();
    }
    let default = Scope::Default {
        app_version: app.clone(),
    };
    // Every endpoint's effective config ID.
    let served = |ecr: Arc<Ecr>| {
        let (app, name) = (app.clone(), name.clone());
        async move {
            let mut out = Vec::new();
            for i in 0..ENDPOINTS {
                let c = ecr.effective(&e(i), &app, &name).await.unwrap();
                out.push(c.map(|(c, _)| c.config_id));
            }
            out
        }
    };
    for op in ops {
        drain(&mut rx);
        let before = served(Arc::clone(&ecr)).await;
        // The dry run, then the write.
        let predicted = match &op {
            Op::PutLayer {
                layer,
                priority,
                target,
                patch,
            } => {
                let l = Layer {
                    app_version: "v1".into(),
                    name: "default".into(),
                    layer_name: format!("l{layer}"),
                    priority: *priority,
                    target: target
                        .map_or(LayerTarget::All, |g| LayerTarget::Group(format!("g{g}"))),
                    patch: patch.clone(),
                    created: now,
                    updated: now,
                };
                let (_, p) = ecr
                    .write_layer(&app, &name, LayerChange::Put(l.clone()), true, now)
                    .await
                    .unwrap();
                ecr.write_layer(&app, &name, LayerChange::Put(l), false, now)
                    .await
                    .unwrap();
                p
            }
            Op::DeleteLayer(l) => {
                let n = GroupName::new(format!("l{l}")).unwrap();
                let (_, p) = ecr
                    .write_layer(&app, &name, LayerChange::Delete(n.clone()), true, now)
                    .await
                    .unwrap();
                ecr.write_layer(&app, &name, LayerChange::Delete(n), false, now)
                    .await
                    .unwrap();
                p
            }
            Op::Members { group, add, remove } => {
                let g = GroupName::new(format!("g{group}")).unwrap();
                let add: Vec<_> = add.iter().map(|i| e(*i)).collect();
                let remove: Vec<_> = remove.iter().map(|i| e(*i)).collect();
                let (_, p) = ecr
                    .change_members(&app, &g, &add, &remove, true, now)
                    .await
                    .unwrap();
                ecr.change_members(&app, &g, &add, &remove, false, now)
                    .await
                    .unwrap();
                p
            }
            Op::Default(d) => {
                let p = ecr.predict_default(&app, &name, d.as_ref()).await.unwrap();
                match d {
                    Some(d) => {
                        ecr.put(&default, &name, d, &Precondition::None, now)
                            .await
                            .unwrap();
                    }
                    None => {
                        ecr.delete(&default, &name, &Precondition::None)
                            .await
                            .unwrap();
                    }
                }
                p
            }
            Op::Own(i, d) => {
                let p = ecr
                    .predict_endpoint(&e(*i), &app, &name, d.as_ref())
                    .await
                    .unwrap();
                let scope = Scope::Endpoint {
                    endpoint_id: e(*i),
                    app_version: app.clone(),
                };
                match d {
                    Some(d) => {
                        ecr.put(&scope, &name, d, &Precondition::None, now)
                            .await
                            .unwrap();
                    }
                    None => {
                        ecr.delete(&scope, &name, &Precondition::None)
                            .await
                            .unwrap();
                    }
                }
                p
            }
            Op::Batch(endpoints, d) => {
                let map = std::collections::BTreeMap::from([(
                    "v1".to_owned(),
                    endpoints
                        .iter()
                        .map(|i| e(*i).to_string())
                        .collect::<Vec<_>>(),
                )]);
                let mut p = ecr.predict_batch(&map, &name, d).await.unwrap();
                ecr.put_batch(&map, &name, d, now).await.unwrap();
                prop_assert_eq!(p.len(), 1);
                p.pop().unwrap().1
            }
            Op::OwnPatch(i, patch) => {
                let p = ecr
                    .predict_endpoint_patch(&e(*i), &app, &name, patch)
                    .await
                    .unwrap();
                let scope = Scope::Endpoint {
                    endpoint_id: e(*i),
                    app_version: app.clone(),
                };
                ecr.put_patch(&scope, &name, patch, &Precondition::None, now)
                    .await
                    .unwrap();
                p
            }
        };
        let announced = drain(&mut rx);
        let announced_set: BTreeSet<String> = announced
            .iter()
            .map(|c| c.endpoint_id.to_string())
            .collect();
        let predicted_set: BTreeSet<String> = predicted
            .changes
            .iter()
            .map(|c| c.endpoint_id.to_string())
            .collect();
        prop_assert_eq!(&announced_set, &predicted_set, "after {:?}", op);
        // Exactly the endpoints whose effective configuration changed.
        let after = served(Arc::clone(&ecr)).await;
        let changed: BTreeSet<String> = (0..ENDPOINTS)
            .filter(|i| before[*i] != after[*i])
            .map(|i| e(i).to_string())
            .collect();
        prop_assert_eq!(&announced_set, &changed, "after {:?}", op);
        for c in &announced {
            let now = ecr.effective(&c.endpoint_id, &app, &name).await.unwrap();
            prop_assert_eq!(
                c.config.as_ref().map(|c| &c.config_id),
                now.as_ref().map(|(c, _)| &c.config_id)
            );
        }
        for p in &predicted.changes {
            let now = ecr.effective(&p.endpoint_id, &app, &name).await.unwrap();
            prop_assert_eq!(
                p.after.as_ref().map(|c| &c.config_id),
                now.as_ref().map(|(c, _)| &c.config_id),
                "the prediction's document is the one served"
            );
        }
    }
    // Explain, replayed, rebuilds every endpoint's effective configuration.
    for i in 0..ENDPOINTS {
        let explained = ecr.explain(&e(i), &app, &name).await.unwrap();
        let effective = ecr.effective(&e(i), &app, &name).await.unwrap();
        prop_assert_eq!(
            explained.effective.as_ref().map(|c| &c.config_id),
            effective.as_ref().map(|(c, _)| &c.config_id)
        );
        if let Some(c) = explained.effective {
            let doc: Value = serde_json::from_str(&c.content).unwrap();
            prop_assert_eq!(replay(&explained.leaves), doc);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A dry run predicts exactly the endpoints the same write then announces,
    /// with the configuration each is then served; explain replays.
    #[test]
    fn dry_runs_predict_the_announcements(ops in prop::collection::vec(op(), 1..12)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops))?;
    }
}
