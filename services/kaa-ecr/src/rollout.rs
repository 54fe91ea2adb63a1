//! Staged rollouts of a new configuration, gated on what devices report.
//!
//! A [`Rollout`] replaces the default configuration `name` of an app version in
//! cumulative percentage steps (`[1, 10, 50, 100]`). Everything here is pure (no I/O,
//! no clock: the time is an argument); [`crate::core::Ecr`] stores rollouts, answers
//! by cohort and announces, and the controller ([`crate::core::Ecr::drive_rollouts`],
//! run by the ECR service every [`CONTROLLER_TICK`]) reads and advances them.
//!
//! # Cohorts
//!
//! An endpoint's bucket is a stable hash of (rollout ID, endpoint ID) into
//! `[0, 10000)` ([`cohort_bucket`]: SHA-256, first 8 bytes, modulo 10,000). A step of
//! `p` percent holds the endpoints whose bucket is below `p × 100` (basis points,
//! [`basis_points`]), so each step's cohort contains the previous one and membership
//! needs no table. Steps are sorted and deduplicated by their basis points; the step
//! list need not end at 100: completing the last step makes the new configuration
//! the default for everyone.
//!
//! # What ECR serves while a rollout is active
//!
//! An endpoint following the default (no configuration of its own; its own still
//! wins) is answered the rollout's configuration when its bucket is below
//! [`Rollout::served_bp`], else the default as stored (the previous configuration,
//! or none). The store applies this in `effective` ([`served_bucket_limit`]), so the
//! 6/CDTP answers and the announcer of durable announcements agree.
//!
//! # The step's endpoints, and the counts
//!
//! ECR knows an app version's endpoints from 6/CDTP requests and 9/ELCE events (see
//! [`crate::bus`]), and which of them are **online**: every replica follows the
//! 9/ELCE `connected` / `disconnected` broadcasts of the communication services
//! (KPC) and takes an endpoint asking over 6/CDTP for online too (a CMX asks for
//! its connected endpoints, and again for all of them when an ECR starts, on its
//! `provider.started`; so a restarted ECR knows the connected endpoints again
//! within a moment). So, for the current step (its cumulative cohort):
//!
//! - `targeted`: the known endpoints of the app version that follow the default and
//!   are in the cohort;
//! - `delivered`: those of them with a status for the rollout's config ID recorded
//!   since the rollout began (dispatched, applied or rejected): the endpoints ECR
//!   saw reached. **These are "the step's endpoints"** the gate counts; endpoints
//!   that are offline are neither counted for nor against the rollout;
//! - `applied` / `rejected`: their last confirmation of that config ID (2xx or not;
//!   a dispatch of it after the confirmation, e.g. a CMX fetching again when the
//!   device reconnects, does not undo it);
//! - `timedOut`: dispatched but neither applied nor rejected within
//!   `reportTimeoutSeconds` of the (last) dispatch.
//!
//! A configuration is **dispatched** to an endpoint when ECR answers it in full
//! over 6/CDTP, and when a step (or the rollout's creation, or completion)
//! announces it (`endpoint.config.updated`, which carries the content the CMX
//! pushes) to an endpoint that is online then: ECR records that dispatch in the
//! status history at the step's start, through the status queue right after the
//! step's commit and before the announcement is published (so a device's
//! confirmation is ordered after it). So a device that goes silent after the
//! step's push counts as `timedOut` once the report timeout is over, and the abort
//! criteria see it. (This repository's CMX fetches over 6/CDTP before it pushes,
//! so its pushes are recorded by the 6/CDTP dispatch as well; the step's record
//! covers a CMX that pushes the announced content as it is, which the event
//! allows.) The record is as durable as the rest of the status history
//! (group commit; a replica killed between a step's commit and the queue's next
//! commit loses those records, and such endpoints count only once they ask or
//! report). The online set itself is in memory: an endpoint whose `disconnected`
//! event ECR missed stays online until it connects and disconnects again; one
//! whose `connected` event it missed (e.g. while it was down) counts once it asks
//! over 6/CDTP. On a reconnection to another KPC replica whose `disconnected`
//! arrives after the new `connected`, the endpoint is taken for offline (not
//! counted: the error is on the safe side).
//!
//! # Decisions ([`decide`])
//!
//! Only a `running` rollout is decided on; first the abort criteria, then the gate:
//!
//! - **abort** when `sample = applied + rejected + timedOut` is at least `minSample`
//!   and `rejected + timedOut` is more than `maxRejectedPercent` of the sample;
//! - **pass the step** when its soak time is over (`now ≥ soakUntil`), `applied ≥
//!   minApplied` and `applied ≥ minAppliedPercent` of `delivered`; the last step's
//!   passing completes the rollout.
//!
//! # States ([`RolloutState`], [`transition`])
//!
//! `running` → (`pause`) `paused` → (`resume`) `running`. A failed step or `abort` by
//! hand applies `onAbort`: `revert` → `reverted` (the cohort is announced the previous
//! configuration again), `halt` → `halted` (the cohort keeps the new configuration,
//! nothing advances; `abort` on a halted rollout reverts it, `promote` continues it).
//! `promote` passes the current step by hand whatever the gate says (a paused rollout
//! stays paused). Passing the last step → `completed`: the default becomes the new
//! configuration in the same transaction. `running`, `paused` and `halted` are
//! *active*: one active rollout per (app version, name), and the default of that pair
//! cannot be written meanwhile (409).
//!
//! # Layer rollouts
//!
//! A rollout with a [`LayerRollout`] (`Rollout::layer`) rolls out a new version of
//! one layer of the (app version, name) instead of its default, through the same
//! steps, gates, states and actions: the cohort is served the layer's new version
//! in place of the stored one. What it counts and announces differs (each endpoint
//! on its own composed config ID); see `crate::core`'s `layer_rollout` module.
//! One active rollout per default and per layer; a layer rollout does not lock the
//! default, only its layer.

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// How many buckets the cohort hash has (a bucket is a hundredth of a percent).
pub const COHORT_BUCKETS: u32 = 10_000;
/// The most steps a rollout may have.
pub const MAX_STEPS: usize = 100;
/// The longest soak time or report timeout, in seconds (one year).
pub const MAX_SECONDS: u64 = 31_536_000;
/// The largest `minApplied` / `minSample`.
pub const MAX_COUNT: u64 = 1_000_000_000;
/// How often the controller looks at the active rollouts.
pub const CONTROLLER_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// The bucket of `endpoint_id` in rollout `rollout_id`: in `[0, COHORT_BUCKETS)`.
pub fn cohort_bucket(rollout_id: &str, endpoint_id: &str) -> u32 {
    let digest = sha2::Sha256::new()
        .chain_update(b"kaa-ecr rollout\0")
        .chain_update(rollout_id.as_bytes())
        .chain_update(b"\0")
        .chain_update(endpoint_id.as_bytes())
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(bytes) % u64::from(COHORT_BUCKETS)) as u32
}

/// A percentage as basis points (hundredths of a percent, rounded), in
/// `[0, COHORT_BUCKETS]`.
pub fn basis_points(percent: f64) -> u32 {
    let bp = (percent * 100.0).round();
    if bp.is_nan() || bp <= 0.0 {
        0
    } else if bp >= f64::from(COHORT_BUCKETS) {
        COHORT_BUCKETS
    } else {
        bp as u32
    }
}

/// Whether the active rollout `(rollout_id, served_bp)` serves its configuration to
/// `endpoint_id` (an endpoint following the default).
pub fn served_bucket_limit(rollout_id: &str, served_bp: u32, endpoint_id: &str) -> bool {
    served_bp > 0 && cohort_bucket(rollout_id, endpoint_id) < served_bp
}

/// The gate of every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gate {
    /// The least share of the step's endpoints (see the module docs: the cohort's
    /// endpoints ECR saw reached) that must have applied the configuration, 0 to 100.
    #[schema(minimum = 0, maximum = 100)]
    pub min_applied_percent: f64,
    /// The least number of endpoints that must have applied it.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "whole_number")]
    pub min_applied: u64,
    /// How long a step lasts at least, in seconds (0 to a year).
    #[schema(minimum = 0, maximum = 31_536_000)]
    #[serde(deserialize_with = "whole_number")]
    pub soak_seconds: u64,
}

/// When a rollout aborts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbortCriteria {
    /// Abort when rejections and timeouts are more than this share of the sample, 0
    /// to 100.
    #[schema(minimum = 0, maximum = 100)]
    pub max_rejected_percent: f64,
    /// The least sample (endpoints that applied, rejected or timed out) before the
    /// share is judged.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "whole_number")]
    pub min_sample: u64,
    /// A dispatched endpoint (answered over 6/CDTP, or announced the configuration
    /// by a step while online) that reports nothing within this many seconds counts
    /// as failed (1 to a year).
    #[schema(minimum = 1, maximum = 31_536_000)]
    #[serde(deserialize_with = "whole_number")]
    pub report_timeout_seconds: u64,
}

/// A count or a number of seconds: a JSON integer, also written as a number with
/// no fractional part (`570.0`, which JSON Schema calls an integer too).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a non-negative integer")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            if v.fract() == 0.0 && (0.0..=MAX_COUNT as f64).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::custom(format!(
                    "{v} is not a whole number from 0 to {MAX_COUNT}"
                )))
            }
        }
    }
    d.deserialize_any(Visitor)
}

/// What an abort does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnAbort {
    /// Every endpoint goes back to the previous configuration.
    Revert,
    /// The cohort keeps the new configuration; nothing advances.
    Halt,
}

/// The state of a rollout (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    /// Steps advance as their gates pass.
    Running,
    /// Stopped by hand; the cohort keeps the new configuration.
    Paused,
    /// Aborted with `onAbort: halt`; the cohort keeps the new configuration.
    Halted,
    /// Every step passed; the new configuration is the default.
    Completed,
    /// Aborted with `onAbort: revert`; everyone is back on the previous configuration.
    Reverted,
}

impl RolloutState {
    /// Whether the rollout still holds its (app version, name): running, paused or
    /// halted.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Paused | Self::Halted)
    }
}

/// The state of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    /// Not begun.
    Pending,
    /// Begun: its cohort has the new configuration; the gate is being watched.
    Soaking,
    /// Its gate passed (or it was promoted by hand).
    Passed,
    /// The rollout aborted during it.
    Failed,
}

/// What the endpoints of a step's cohort reported (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepCounts {
    /// Known endpoints following the default in the cohort.
    pub targeted: u64,
    /// Of those, the ones ECR saw reached (dispatched, applied or rejected).
    pub delivered: u64,
    /// Latest status for the new config ID: applied.
    pub applied: u64,
    /// Latest status for the new config ID: rejected.
    pub rejected: u64,
    /// Dispatched without a report within the report timeout.
    pub timed_out: u64,
}

/// One step of a rollout, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// The cumulative percentage of the app version's endpoints.
    pub percent: f64,
    /// Its state.
    pub state: StepState,
    /// The counts when it ended (zero while it runs: see [`Rollout`] readers for the
    /// live ones).
    pub counts: StepCounts,
    /// When it began (Unix ms).
    pub started_ms: Option<i64>,
    /// When its soak time ends (Unix ms).
    pub soak_until_ms: Option<i64>,
}

/// A rollout as stored (the store keeps it as a JSON document).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Its ID (a UUID).
    pub rollout_id: String,
    /// The app version.
    pub app_version: String,
    /// The configuration name.
    pub name: String,
    /// The new configuration's ID.
    pub config_id: String,
    /// The new configuration, canonical JSON.
    pub content: String,
    /// The default's config ID when the rollout began (`None`: there was none).
    pub previous_config_id: Option<String>,
    /// Its state.
    pub state: RolloutState,
    /// Why it stopped, when it did.
    pub reason: Option<String>,
    /// The index of the current step.
    pub step: usize,
    /// The steps.
    pub steps: Vec<Step>,
    /// The gate.
    pub gate: Gate,
    /// The abort criteria.
    pub abort: AbortCriteria,
    /// What an abort does.
    pub on_abort: OnAbort,
    /// When it was created (Unix ms).
    pub created_ms: i64,
    /// When it last changed (Unix ms).
    pub updated_ms: i64,
    /// Bumped by every change: the ETag is `"<rolloutId>-<revision>"`, and the store
    /// writes a change only over the revision it was computed from.
    pub revision: u64,
    /// A layer rollout's layer (see [`LayerRollout`]); `None` for a rollout of the
    /// default. Absent from the documents of rollouts stored before layer rollouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<LayerRollout>,
}

/// What a **layer rollout** rolls out: a new version of one layer of the (app
/// version, name), in the same gated steps as a default (see
/// [`crate::layers::RollingLayer`] for how the stores compose it).
///
/// While it is active the layer as stored stays the previous version (or absent);
/// an endpoint in the served cohort gets [`LayerRollout::priority`],
/// [`LayerRollout::group`] and [`LayerRollout::patch`] in its place. Completing it
/// writes the new version as the stored layer; reverting it leaves the stored
/// layer, so everyone is back on the previous version. For a layer rollout the
/// rollout's `config_id` / `content` are those of the new patch (a label; every
/// endpoint's expected config ID is its own composed one) and
/// `previous_config_id` that of the previous patch (`None`: the layer did not
/// exist).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerRollout {
    /// The layer's name.
    pub layer_name: String,
    /// Its new priority.
    pub priority: i64,
    /// Its new target group (`None`: every endpoint).
    pub group: Option<String>,
    /// Its new merge patch.
    pub patch: serde_json::Value,
    /// The previous version's target group, when there was a previous version
    /// (`Some(None)`: every endpoint).
    #[serde(default)]
    pub previous_group: Option<Option<String>>,
}

impl Rollout {
    /// The layer a layer rollout rolls out, as the name of its store row's
    /// `layer_name` column: `""` for a rollout of the default.
    pub fn layer_column(&self) -> &str {
        self.layer.as_ref().map_or("", |l| l.layer_name.as_str())
    }
}

/// Why a rollout request is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

/// Validates the parts of a new rollout and builds it (step 0 soaking from `now`).
#[allow(clippy::too_many_arguments)]
pub fn new_rollout(
    rollout_id: String,
    app_version: &str,
    name: &str,
    content: &crate::model::Content,
    steps: &[f64],
    gate: Gate,
    abort: AbortCriteria,
    on_abort: OnAbort,
    now: i64,
) -> Result<Rollout, SpecError> {
    let bad = |m: String| Err(SpecError(m));
    if steps.is_empty() || steps.len() > MAX_STEPS {
        return bad(format!("steps must list 1 to {MAX_STEPS} percentages"));
    }
    if let Some(p) = steps.iter().find(|p| !(**p > 0.0 && **p <= 100.0)) {
        return bad(format!(
            "a step is a percentage above 0 and at most 100 (got {p})"
        ));
    }
    if !(0.0..=100.0).contains(&gate.min_applied_percent) {
        return bad("gate.minAppliedPercent must be from 0 to 100".into());
    }
    if !(0.0..=100.0).contains(&abort.max_rejected_percent) {
        return bad("abort.maxRejectedPercent must be from 0 to 100".into());
    }
    if gate.soak_seconds > MAX_SECONDS {
        return bad(format!("gate.soakSeconds must be at most {MAX_SECONDS}"));
    }
    if abort.report_timeout_seconds == 0 || abort.report_timeout_seconds > MAX_SECONDS {
        return bad(format!(
            "abort.reportTimeoutSeconds must be from 1 to {MAX_SECONDS}"
        ));
    }
    if gate.min_applied > MAX_COUNT || abort.min_sample == 0 || abort.min_sample > MAX_COUNT {
        return bad(format!(
            "gate.minApplied must be from 0 and abort.minSample from 1, both to {MAX_COUNT}"
        ));
    }
    let mut sorted: Vec<f64> = steps.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.dedup_by(|a, b| basis_points(*a) == basis_points(*b));
    let mut steps: Vec<Step> = sorted
        .into_iter()
        .map(|percent| Step {
            percent,
            state: StepState::Pending,
            counts: StepCounts::default(),
            started_ms: None,
            soak_until_ms: None,
        })
        .collect();
    start_step(&mut steps[0], &gate, now);
    Ok(Rollout {
        rollout_id,
        app_version: app_version.to_owned(),
        name: name.to_owned(),
        config_id: content.config_id.clone(),
        content: content.json.clone(),
        previous_config_id: None,
        state: RolloutState::Running,
        reason: None,
        step: 0,
        steps,
        gate,
        abort,
        on_abort,
        created_ms: now,
        updated_ms: now,
        revision: 1,
        layer: None,
    })
}

fn start_step(step: &mut Step, gate: &Gate, now: i64) {
    step.state = StepState::Soaking;
    step.started_ms = Some(now);
    let soak = i64::try_from(gate.soak_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    step.soak_until_ms = Some(now.saturating_add(soak));
}

impl Rollout {
    /// Buckets below this are served the new configuration: the current step's basis
    /// points while active, 0 otherwise (completed: the default holds it; reverted:
    /// nobody).
    pub fn served_bp(&self) -> u32 {
        if self.state.is_active() {
            basis_points(self.steps[self.step].percent)
        } else {
            0
        }
    }

    /// The buckets whose endpoints effectively have the new configuration: as
    /// [`Rollout::served_bp`], but everyone once completed.
    pub fn new_config_bp(&self) -> u32 {
        match self.state {
            RolloutState::Completed => COHORT_BUCKETS,
            _ => self.served_bp(),
        }
    }

    /// The ETag: `"<rolloutId>-<revision>"`.
    pub fn etag(&self) -> String {
        format!("\"{}-{}\"", self.rollout_id, self.revision)
    }
}

/// The buckets `[from, to)` whose endpoints' effective configuration a change from
/// `before` to `after` switched (new ↔ previous): these are announced. `before`
/// `None` is the creation.
pub fn announced_buckets(before: Option<&Rollout>, after: &Rollout) -> std::ops::Range<u32> {
    let b = before.map_or(0, Rollout::new_config_bp);
    let a = after.new_config_bp();
    b.min(a)..b.max(a)
}

/// One endpoint's latest status for a rollout's config ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// What it is.
    pub status: crate::model::DeliveryStatus,
    /// When ECR last dispatched the configuration (a full 6/CDTP answer, or a step's
    /// announcement to an online endpoint; Unix ms).
    pub dispatched_ms: Option<i64>,
}

/// Counts the cohort below `bp` of rollout `rollout_id` (see the module docs):
/// `followers` are the known endpoints following the default, `report` gives an
/// endpoint's report, if any.
pub fn count<'a>(
    rollout_id: &str,
    bp: u32,
    followers: impl IntoIterator<Item = &'a str>,
    report: impl Fn(&str) -> Option<Report>,
    report_timeout_seconds: u64,
    now: i64,
) -> StepCounts {
    use crate::model::DeliveryStatus;
    let timeout = i64::try_from(report_timeout_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut c = StepCounts::default();
    for endpoint in followers {
        if cohort_bucket(rollout_id, endpoint) >= bp {
            continue;
        }
        c.targeted += 1;
        let Some(r) = report(endpoint) else {
            continue;
        };
        c.delivered += 1;
        match r.status {
            DeliveryStatus::Applied => c.applied += 1,
            DeliveryStatus::Rejected => c.rejected += 1,
            DeliveryStatus::Dispatched => {
                if r.dispatched_ms
                    .is_some_and(|d| now.saturating_sub(d) >= timeout)
                {
                    c.timed_out += 1;
                }
            }
        }
    }
    c
}

/// What the controller does with a running rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing yet.
    Wait,
    /// The current step passed; begin the next one.
    Advance,
    /// The last step passed; the new configuration becomes the default.
    Complete,
    /// The abort criteria are met.
    Abort {
        /// Why, for the rollout's `reason`.
        reason: String,
    },
}

/// Whether the abort criteria hold for `counts`.
pub fn abort_due(abort: &AbortCriteria, counts: &StepCounts) -> bool {
    let failures = counts.rejected + counts.timed_out;
    let sample = counts.applied + failures;
    sample >= abort.min_sample
        && failures as f64 * 100.0 > abort.max_rejected_percent * sample as f64
}

/// Whether the gate holds for `counts` (the soak time aside).
pub fn gate_holds(gate: &Gate, counts: &StepCounts) -> bool {
    counts.applied >= gate.min_applied
        && counts.applied as f64 * 100.0 >= gate.min_applied_percent * counts.delivered as f64
}

/// The controller's decision for `rollout` given the current step's `counts` at
/// `now` (Unix ms). Pure; see the module docs.
pub fn decide(rollout: &Rollout, counts: &StepCounts, now: i64) -> Decision {
    if rollout.state != RolloutState::Running {
        return Decision::Wait;
    }
    if abort_due(&rollout.abort, counts) {
        let failures = counts.rejected + counts.timed_out;
        return Decision::Abort {
            reason: format!(
                "step {} ({}%): {} of {} reports failed ({} rejected, {} timed out), more than {}%",
                rollout.step,
                rollout.steps[rollout.step].percent,
                failures,
                failures + counts.applied,
                counts.rejected,
                counts.timed_out,
                rollout.abort.max_rejected_percent
            ),
        };
    }
    let soaked = rollout.steps[rollout.step]
        .soak_until_ms
        .is_none_or(|until| now >= until);
    if soaked && gate_holds(&rollout.gate, counts) {
        if rollout.step + 1 >= rollout.steps.len() {
            Decision::Complete
        } else {
            Decision::Advance
        }
    } else {
        Decision::Wait
    }
}

/// An operator's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop advancing.
    Pause,
    /// Advance again.
    Resume,
    /// Abort now (`onAbort`; a halted rollout reverts).
    Abort,
    /// Pass the current step now, whatever the gate says.
    Promote,
}

impl Action {
    /// Its name in the REST route.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Abort => "abort",
            Self::Promote => "promote",
        }
    }
}

/// What happens to a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The controller decided.
    Decided(Decision),
    /// An operator acted.
    Acted(Action),
}

/// The rollout after `event` at `now`, with the current step's `counts` frozen into
/// it when the step ends; `Ok(None)` when nothing changes (a `Wait`), `Err` with a
/// message when the state does not allow the action (409). Pure.
pub fn transition(
    rollout: &Rollout,
    event: &Event,
    counts: &StepCounts,
    now: i64,
) -> Result<Option<Rollout>, String> {
    use RolloutState::*;
    let mut r = rollout.clone();
    let state = r.state;
    let refuse = |what: &str| Err(format!("a {} rollout cannot be {what}", state_name(state)));
    match event {
        Event::Decided(Decision::Wait) => return Ok(None),
        Event::Decided(_) if state != Running => return Ok(None),
        Event::Decided(Decision::Advance) | Event::Decided(Decision::Complete) => {
            pass_step(&mut r, counts, now, "every step passed its gate");
        }
        Event::Decided(Decision::Abort { reason }) => abort(&mut r, counts, reason.clone()),
        Event::Acted(Action::Pause) => match state {
            Running => r.state = Paused,
            _ => return refuse("paused"),
        },
        Event::Acted(Action::Resume) => match state {
            Paused => r.state = Running,
            _ => return refuse("resumed"),
        },
        Event::Acted(Action::Abort) => match state {
            Running | Paused => abort(&mut r, counts, "aborted by hand".into()),
            Halted => {
                r.state = Reverted;
                r.reason = Some("aborted by hand after it halted".into());
            }
            _ => return refuse("aborted"),
        },
        Event::Acted(Action::Promote) => match state {
            Running | Paused | Halted => {
                if state == Halted {
                    r.state = Running;
                    r.reason = None;
                }
                pass_step(&mut r, counts, now, "promoted by hand");
            }
            _ => return refuse("promoted"),
        },
    }
    r.updated_ms = now;
    r.revision += 1;
    Ok(Some(r))
}

fn pass_step(r: &mut Rollout, counts: &StepCounts, now: i64, reason: &str) {
    let i = r.step;
    r.steps[i].state = StepState::Passed;
    r.steps[i].counts = *counts;
    if i + 1 >= r.steps.len() {
        r.state = RolloutState::Completed;
        r.reason = Some(reason.to_owned());
    } else {
        r.step = i + 1;
        let gate = r.gate.clone();
        start_step(&mut r.steps[i + 1], &gate, now);
    }
}

fn abort(r: &mut Rollout, counts: &StepCounts, reason: String) {
    let i = r.step;
    r.steps[i].state = StepState::Failed;
    r.steps[i].counts = *counts;
    r.state = match r.on_abort {
        OnAbort::Revert => RolloutState::Reverted,
        OnAbort::Halt => RolloutState::Halted,
    };
    r.reason = Some(reason);
}

/// The state's name as the API spells it.
pub fn state_name(state: RolloutState) -> &'static str {
    match state {
        RolloutState::Running => "running",
        RolloutState::Paused => "paused",
        RolloutState::Halted => "halted",
        RolloutState::Completed => "completed",
        RolloutState::Reverted => "reverted",
    }
}

#[cfg(test)]
mod tests;
