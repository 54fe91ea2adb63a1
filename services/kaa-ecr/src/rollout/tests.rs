//! The controller's decisions against any sequence of reports (proptest), and the
//! cohort and transition rules.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::model::{Content, DeliveryStatus};

fn rollout(steps: &[f64], gate: Gate, abort: AbortCriteria, on_abort: OnAbort) -> Rollout {
    let content = Content::from_value(&serde_json::json!({"v": 2}));
    new_rollout(
        "r-1".into(),
        "app",
        "default",
        &content,
        steps,
        gate,
        abort,
        on_abort,
        0,
    )
    .unwrap()
}

#[test]
fn cohorts_are_stable_nested_and_near_their_share() {
    let ids: Vec<String> = (0..20_000).map(|i| format!("ep-{i}")).collect();
    let mut previous = 0;
    for percent in [1.0, 10.0, 50.0, 100.0] {
        let bp = basis_points(percent);
        let inside = ids.iter().filter(|e| cohort_bucket("r", e) < bp).count();
        assert!(inside >= previous);
        let expected = ids.len() as f64 * percent / 100.0;
        assert!(
            (inside as f64 - expected).abs() <= expected * 0.2 + 20.0,
            "{percent}%: {inside} of {}",
            ids.len()
        );
        previous = inside;
    }
    assert_eq!(cohort_bucket("r", "ep-1"), cohort_bucket("r", "ep-1"));
    assert_ne!(
        (0..50)
            .map(|i| cohort_bucket("a", &format!("e{i}")))
            .collect::<Vec<_>>(),
        (0..50)
            .map(|i| cohort_bucket("b", &format!("e{i}")))
            .collect::<Vec<_>>()
    );
    assert_eq!(basis_points(100.0), COHORT_BUCKETS);
    assert_eq!(basis_points(0.004), 0);
    assert_eq!(basis_points(0.5), 50);
}

#[test]
fn steps_are_sorted_and_deduplicated_and_invalid_specs_refused() {
    let gate = Gate {
        min_applied_percent: 90.0,
        min_applied: 1,
        soak_seconds: 10,
    };
    let abort = AbortCriteria {
        max_rejected_percent: 5.0,
        min_sample: 10,
        report_timeout_seconds: 60,
    };
    let r = rollout(
        &[50.0, 1.0, 10.0, 50.001, 100.0],
        gate.clone(),
        abort.clone(),
        OnAbort::Revert,
    );
    let percents: Vec<f64> = r.steps.iter().map(|s| s.percent).collect();
    assert_eq!(percents, [1.0, 10.0, 50.0, 100.0]);
    assert_eq!(r.steps[0].state, StepState::Soaking);
    assert_eq!(r.steps[0].soak_until_ms, Some(10_000));
    let content = Content::from_value(&serde_json::json!(1));
    for steps in [&[][..], &[0.0][..], &[101.0][..], &[-1.0][..]] {
        assert!(
            new_rollout(
                "x".into(),
                "a",
                "default",
                &content,
                steps,
                gate.clone(),
                abort.clone(),
                OnAbort::Halt,
                0
            )
            .is_err()
        );
    }
}

#[test]
fn counts_and_seconds_may_be_written_as_whole_floats() {
    let g: Gate =
        serde_json::from_str(r#"{"minAppliedPercent": 90, "minApplied": 570.0, "soakSeconds": 3}"#)
            .unwrap();
    assert_eq!((g.min_applied, g.soak_seconds), (570, 3));
    for bad in ["1.5", "-1", "1e300"] {
        let text = format!(r#"{{"minAppliedPercent": 1, "minApplied": {bad}, "soakSeconds": 0}}"#);
        assert!(serde_json::from_str::<Gate>(&text).is_err(), "{bad}");
    }
}

#[test]
fn operator_actions_follow_the_state_machine() {
    let gate = Gate {
        min_applied_percent: 100.0,
        min_applied: 1000,
        soak_seconds: 0,
    };
    let abort = AbortCriteria {
        max_rejected_percent: 50.0,
        min_sample: 1,
        report_timeout_seconds: 60,
    };
    let zero = StepCounts::default();
    let r = rollout(&[10.0, 100.0], gate.clone(), abort.clone(), OnAbort::Halt);
    let act = |r: &Rollout, a| transition(r, &Event::Acted(a), &zero, 5);
    assert!(act(&r, Action::Resume).is_err());
    let paused = act(&r, Action::Pause).unwrap().unwrap();
    assert_eq!(paused.state, RolloutState::Paused);
    assert_eq!(paused.revision, r.revision + 1);
    assert_eq!(decide(&paused, &zero, 1_000_000), Decision::Wait);
    let promoted = act(&paused, Action::Promote).unwrap().unwrap();
    assert_eq!((promoted.state, promoted.step), (RolloutState::Paused, 1));
    let halted = act(&promoted, Action::Abort).unwrap().unwrap();
    assert_eq!(halted.state, RolloutState::Halted);
    assert_eq!(halted.served_bp(), COHORT_BUCKETS);
    let reverted = act(&halted, Action::Abort).unwrap().unwrap();
    assert_eq!(reverted.state, RolloutState::Reverted);
    assert_eq!(reverted.served_bp(), 0);
    assert_eq!(
        announced_buckets(Some(&halted), &reverted),
        0..COHORT_BUCKETS
    );
    for a in [
        Action::Pause,
        Action::Resume,
        Action::Abort,
        Action::Promote,
    ] {
        assert!(act(&reverted, a).is_err(), "{a:?}");
    }
    let done = act(&act(&r, Action::Promote).unwrap().unwrap(), Action::Promote)
        .unwrap()
        .unwrap();
    assert_eq!(done.state, RolloutState::Completed);
    assert_eq!(done.served_bp(), 0);
    assert_eq!(done.new_config_bp(), COHORT_BUCKETS);
}

/// One generated report: after `dt` ms, endpoint `endpoint` reports `kind`
/// (0 dispatched, 1 applied, 2 rejected, 3 nothing: only time passes).
#[derive(Debug, Clone)]
struct Step_ {
    dt: i64,
    endpoint: usize,
    kind: u8,
}

fn gates() -> impl Strategy<Value = (Gate, AbortCriteria, OnAbort, Vec<f64>)> {
    (
        0.0..=100.0f64,
        0u64..20,
        0u64..30,
        0.0..=100.0f64,
        1u64..30,
        1u64..60,
        any::<bool>(),
        proptest::collection::vec(0.5..=100.0f64, 1..5),
    )
        .prop_map(|(gp, ga, soak, ap, sample, timeout, revert, steps)| {
            (
                Gate {
                    min_applied_percent: gp,
                    min_applied: ga,
                    soak_seconds: soak,
                },
                AbortCriteria {
                    max_rejected_percent: ap,
                    min_sample: sample,
                    report_timeout_seconds: timeout,
                },
                if revert {
                    OnAbort::Revert
                } else {
                    OnAbort::Halt
                },
                steps,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Against any sequence of reports and times: the controller aborts exactly when
    /// the abort criteria hold, passes a step exactly when its soak time is over and
    /// its gate holds (never before), the served cohort only grows until an abort,
    /// a stopped rollout never moves again, and no endpoint outside the cohort of the
    /// step it aborted at was ever served the new configuration.
    #[test]
    fn controller_decisions_match_the_criteria(
        (gate, abort, on_abort, steps) in gates(),
        events in proptest::collection::vec(
            (0i64..20_000, 0usize..200, 0u8..4).prop_map(|(dt, endpoint, kind)| Step_ { dt, endpoint, kind }),
            0..300,
        ),
    ) {
        let endpoints: Vec<String> = (0..200).map(|i| format!("ep-{i}")).collect();
        let mut r = rollout(&steps, gate.clone(), abort.clone(), on_abort);
        let mut reports: HashMap<String, Report> = HashMap::new();
        let mut ever_served: std::collections::HashSet<String> = Default::default();
        let mut now = 0i64;
        for ev in events {
            now += ev.dt;
            let served = r.served_bp();
            for e in &endpoints {
                if cohort_bucket(&r.rollout_id, e) < served {
                    ever_served.insert(e.clone());
                }
            }
            // Only endpoints served the new configuration report on it.
            let e = &endpoints[ev.endpoint];
            if ev.kind < 3 && cohort_bucket(&r.rollout_id, e) < served {
                let status = [DeliveryStatus::Dispatched, DeliveryStatus::Applied, DeliveryStatus::Rejected][ev.kind as usize];
                reports.insert(e.clone(), Report { status, dispatched_ms: Some(now) });
            }
            let bp = basis_points(r.steps[r.step].percent);
            let counts = count(&r.rollout_id, bp, endpoints.iter().map(String::as_str), |e| reports.get(e).copied(), abort.report_timeout_seconds, now);
            prop_assert!(counts.delivered <= counts.targeted);
            prop_assert!(counts.applied + counts.rejected + counts.timed_out <= counts.delivered);
            let decision = decide(&r, &counts, now);
            let soaked = r.steps[r.step].soak_until_ms.is_none_or(|u| now >= u);
            let running = r.state == RolloutState::Running;
            let expect_abort = running && abort_due(&abort, &counts);
            let expect_pass = running && !expect_abort && soaked && gate_holds(&gate, &counts);
            prop_assert_eq!(matches!(decision, Decision::Abort { .. }), expect_abort);
            prop_assert_eq!(matches!(decision, Decision::Advance | Decision::Complete), expect_pass);
            if expect_pass {
                prop_assert_eq!(decision == Decision::Complete, r.step + 1 == r.steps.len());
            }
            // The same inputs give the same decision (the controller is idempotent).
            prop_assert_eq!(&decide(&r, &counts, now), &decision);
            let before = r.clone();
            if let Some(next) = transition(&r, &Event::Decided(decision.clone()), &counts, now).unwrap() {
                prop_assert_eq!(next.revision, before.revision + 1);
                prop_assert!(next.step >= before.step);
                match next.state {
                    RolloutState::Reverted => prop_assert_eq!(next.served_bp(), 0),
                    RolloutState::Completed => prop_assert_eq!(next.new_config_bp(), COHORT_BUCKETS),
                    _ => prop_assert!(next.served_bp() >= before.served_bp()),
                }
                if matches!(next.state, RolloutState::Reverted | RolloutState::Halted) {
                    // Nobody beyond the cohort of the failed step ever had it.
                    let limit = basis_points(before.steps[before.step].percent);
                    for e in &ever_served {
                        prop_assert!(cohort_bucket(&r.rollout_id, e) < limit);
                    }
                    prop_assert_eq!(next.steps[next.step].state, StepState::Failed);
                    prop_assert_eq!(next.steps[next.step].counts, counts);
                }
                if next.step > before.step {
                    prop_assert_eq!(before.steps[before.step].state, StepState::Soaking);
                    prop_assert_eq!(next.steps[before.step].state, StepState::Passed);
                    prop_assert!(now >= before.steps[before.step].soak_until_ms.unwrap());
                }
                r = next;
            }
            if !r.state.is_active() {
                // Stopped for good: no decision moves it.
                prop_assert_eq!(decide(&r, &counts, now + 1_000_000), Decision::Wait);
            }
        }
    }
}
