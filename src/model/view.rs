//! What the control socket shows of a model ([`ModelView`]), from a loaded actor or from a
//! persisted record.

use serde::Serialize;

use crate::config::ModelRule;
use crate::policy::bind_states;
use crate::store::ModelRecord;

use crate::probation::Progress;

/// What the control socket shows of a model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelView {
    pub model_id: String,
    pub events: u64,
    pub last_seen: f64,
    pub first_seen: f64,
    pub decisions: u64,
    pub last_decision: Option<DecisionView>,
    pub restarts: u64,
    pub warmup_left: u64,
    pub policies: Vec<PolicyView>,
    pub recent_drift: Vec<f32>,
    pub recent_accuracy: Vec<f32>,
    /// Decisions since the daemon started, per policy and action (for `metrics`); empty for
    /// a model not loaded in this run.
    pub decision_counts: Vec<DecisionCount>,
    /// The running probation, for a model on probation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probation: Option<Progress>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionCount {
    pub policy: String,
    pub action: &'static str,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecisionView {
    pub at: f64,
    pub policy: String,
    pub action: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyView {
    pub name: String,
    pub kind: String,
    /// The state as named numbers (window fill, mean, threshold; a detector's statistic...).
    pub state: crate::policy::NamedNumbers,
    /// The state in words, for the table.
    pub summary: String,
    /// Values this policy refused since the model was loaded: they would have made its
    /// detector's state non-finite.
    pub values_rejected: u64,
}

impl PolicyView {
    /// The view of one policy's state under its spec.
    pub fn new(spec: &crate::policy::PolicySpec, st: &crate::policy::PolicyState) -> PolicyView {
        PolicyView {
            name: spec.name.clone(),
            kind: spec.kind.kind_name().into(),
            state: st.state(spec),
            summary: st.summary(spec),
            values_rejected: st.values_rejected.0,
        }
    }
}

impl ModelView {
    /// The view of a persisted record (a model not loaded in this run).
    pub fn from_record(model_id: &str, rec: &ModelRecord, rule: Option<&ModelRule>) -> ModelView {
        let policies = match rule {
            Some(rule) => rule
                .policies
                .iter()
                .zip(bind_states(&rule.policies, rec.policies.clone()))
                .map(|(spec, st)| PolicyView::new(spec, &st))
                .collect(),
            None => Vec::new(),
        };
        ModelView {
            model_id: model_id.to_owned(),
            events: rec.events,
            last_seen: rec.last_seen,
            first_seen: rec.first_seen,
            decisions: rec.decisions,
            last_decision: rec.last_decision.as_ref().map(|d| DecisionView {
                at: d.at,
                policy: d.policy.clone(),
                action: d.action.as_str().into(),
                reason: d.reason.clone(),
            }),
            restarts: 0,
            warmup_left: rec.warmup_left,
            policies,
            recent_drift: rec.recent_drift.iter().copied().collect(),
            recent_accuracy: rec.recent_accuracy.iter().copied().collect(),
            decision_counts: Vec::new(),
            probation: None,
        }
    }
}
