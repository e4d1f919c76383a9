//! Probation in the simulation (`--simulate` with `[models.probation]`): the verdicts, their
//! lines, and a model's baselines and open probation.

use crate::config::ProbationSpec;
use crate::probation::{Cause, ModelProbation, Plan, Probation, Sample, State, Summary};

/// Probation verdicts by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdicts {
    pub promoted: u64,
    pub rolled_back: u64,
    pub inconclusive: u64,
}

impl Verdicts {
    pub(super) fn count(&mut self, outcome: State) {
        match outcome {
            State::Promoted => self.promoted += 1,
            State::RolledBack => self.rolled_back += 1,
            _ => self.inconclusive += 1,
        }
    }
}

/// A probation's verdict in the simulation (one `--simulate` line, see [`Judged::to_json`]).
pub struct Judged<'a> {
    /// The row of the policy whose decision started the retrain.
    pub row: usize,
    /// The event at which the verdict fell.
    pub index: u64,
    /// The event's 0-based place among its model's events.
    pub nth: u64,
    pub ts: f64,
    /// The retrain's job number (the job line's `job`).
    pub job: u64,
    /// `Promoted`, `RolledBack` or `Inconclusive`.
    pub outcome: State,
    /// Why it was rolled back (`None` unless rolled back).
    pub cause: Option<Cause>,
    pub z: Option<f64>,
    pub z_threshold: Option<f64>,
    pub baseline: Sample,
    pub candidate: Sample,
    /// `on_inconclusive = "escalate"`: a person is told.
    pub escalation: bool,
    pub metric: &'a str,
}

impl Judged<'_> {
    /// The verdict's line: `index`, `model_id`, `policy`, `job`, `ts`, `metric`, `probation`
    /// (`promoted`, `rolled_back` or `inconclusive`), `cause` (`degraded`, `policy_fired`,
    /// `inconclusive` or null), `z` and `z_threshold` (null when there is none, or when z is
    /// infinite: a sample without variance), `baseline` and `candidate` (`n`, `mean`, `std`),
    /// and `escalation` (`{"cause": "inconclusive"}`) when one is called.
    pub fn to_json(&self, model_id: &str, policy: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "index": self.index,
            "model_id": model_id,
            "policy": policy,
            "job": self.job,
            "ts": self.ts,
            "metric": self.metric,
            "probation": self.outcome.as_str(),
            "cause": self.cause.map(Cause::as_str),
            "z": self.z,
            "z_threshold": self.z_threshold,
            "baseline": Summary::from(&self.baseline),
            "candidate": Summary::from(&self.candidate),
        });
        if self.escalation {
            v["escalation"] = serde_json::json!({"cause": "inconclusive"});
        }
        v
    }
}

/// A model's probation in the simulation: the metric's last values and the last promoted
/// candidate (as the daemon keeps them), and the retrain on probation.
#[derive(Default)]
pub(super) struct Trial {
    pub(super) values: ModelProbation,
    pub(super) open: Option<Open>,
}

/// A retrain on probation.
pub(super) struct Open {
    pub(super) probation: Probation,
    pub(super) plan: Plan,
    /// When the retrain succeeded: `max_wait_s` counts from here.
    pub(super) start: f64,
    /// As `Busy::row`.
    pub(super) row: usize,
}

impl Trial {
    /// The baseline of a retrain decided now.
    pub(super) fn baseline(&self, spec: &ProbationSpec) -> Sample {
        self.values.baseline(spec.baseline)
    }

    /// Keeps the event's value (after the event's decisions: a decision's baseline is the
    /// values before it).
    pub(super) fn keep(&mut self, spec: &ProbationSpec, v: f64) {
        self.values.keep(spec.rule.events, v);
    }
}

/// How a probation ends.
pub(super) struct Ending {
    pub(super) outcome: State,
    pub(super) cause: Option<Cause>,
    pub(super) z: Option<f64>,
    pub(super) z_threshold: Option<f64>,
    pub(super) escalation: bool,
}

impl Ending {
    pub(super) fn new(
        outcome: State,
        cause: Option<Cause>,
        z: Option<f64>,
        z_threshold: Option<f64>,
    ) -> Self {
        Ending {
            outcome,
            cause,
            z,
            z_threshold,
            escalation: false,
        }
    }
}
