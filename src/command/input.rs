//! What a hook reads on its stdin: one JSON object, typed here and serialized once.
//!
//! The decision's event is serialized once, when the model actor makes the decision
//! ([`HookEvent::raw`]), and then carried as raw JSON: the job stores the whole input as its
//! `decision` text, which is exactly the hook's stdin (the contract's section 4). Keys are
//! declared in alphabetical order, the order the journal has always had.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::policy::{Action, Obs};
use crate::probation::Summary;

/// A hook's stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookInput {
    pub action: Action,
    /// When the decision was made (the event's `ts`; an operator's trigger: its time).
    pub at: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,
    /// The event that caused it (`null` for an operator's trigger).
    pub event: Option<Box<RawValue>>,
    pub job_id: u64,
    pub manual: bool,
    pub model_id: String,
    pub policy: String,
    /// A rollback's: why it runs (`cause`) and, after a probation, its figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation: Option<ProbationInput>,
    /// A promote's: the retrain job it confirms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_of: Option<u64>,
    pub reason: String,
    /// A rollback's: the receipt the retrain it undoes wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Box<RawValue>>,
    /// The interrupted job this one redoes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<u64>,
    /// A rollback's: the retrain job it undoes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
}

/// What a rollback (or promote) hook reads of the probation that led to it (contract section
/// 7). An operator's rollback of a retrain not on probation has only `cause = "manual"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbationInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Summary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Summary>,
    /// `degraded`, `policy_fired`, `inconclusive` or `manual`.
    pub cause: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z_threshold: Option<f64>,
}

impl ProbationInput {
    pub fn manual() -> ProbationInput {
        ProbationInput {
            baseline: None,
            candidate: None,
            cause: "manual".into(),
            metric: None,
            tolerance: None,
            z: None,
            z_threshold: None,
        }
    }
}

/// Why a job runs another action than the one decided.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Escalation {
    /// `loop_guard` or `budget`.
    pub cause: String,
    pub decided_action: Action,
    pub decided_reason: String,
}

impl HookInput {
    /// The JSON text (what the job stores and the hook reads).
    pub fn to_json(&self) -> String {
        // Serializing plain fields and already valid raw JSON cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// An event as a hook sees it.
#[derive(Serialize)]
pub struct HookEvent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drift_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_map")]
    metrics: Vec<(&'a str, f64)>,
    model_id: &'a str,
    ts: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
}

fn as_map<S: serde::Serializer>(m: &[(&str, f64)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(m.iter().map(|(k, v)| (k, v)))
}

impl<'a> HookEvent<'a> {
    pub fn new(model_id: &'a str, obs: &'a Obs) -> HookEvent<'a> {
        let mut metrics: Vec<(&str, f64)> = obs.metrics.iter().map(|(k, v)| (&**k, *v)).collect();
        // Sorted by name, one value per name (the last one given), as a JSON object reads.
        metrics.reverse();
        metrics.sort_by(|a, b| a.0.cmp(b.0));
        metrics.dedup_by(|a, b| a.0 == b.0);
        HookEvent {
            accuracy: obs.accuracy,
            drift_score: obs.drift_score,
            error: obs.error.map(u8::from),
            meta: obs
                .meta
                .as_deref()
                .and_then(|m| serde_json::from_str::<&RawValue>(m).ok()),
            metrics,
            model_id,
            ts: obs.ts,
            value: obs.value,
        }
    }

    /// Serialized once, carried raw from here on.
    pub fn raw(&self) -> Option<Box<RawValue>> {
        serde_json::value::to_raw_value(self).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_is_the_journal_s_object_and_reads_back() {
        let obs = Obs {
            ts: 12.5,
            received: 0.0,
            drift_score: Some(0.75),
            accuracy: None,
            error: Some(true),
            value: None,
            metrics: vec![("z".into(), 1.0), ("a".into(), 2.0), ("z".into(), 3.0)],
            meta: Some(r#"{"k": [1, "x"]}"#.into()),
        };
        let input = HookInput {
            action: Action::Full,
            at: 12.5,
            escalation: None,
            event: HookEvent::new("m1", &obs).raw(),
            job_id: 4,
            manual: false,
            model_id: "m1".into(),
            policy: "p".into(),
            probation: None,
            promote_of: None,
            reason: "why".into(),
            receipt: None,
            retry_of: None,
            rollback_of: None,
        };
        let text = input.to_json();
        assert_eq!(
            text,
            r#"{"action":"full","at":12.5,"event":{"drift_score":0.75,"error":1,"meta":{"k": [1, "x"]},"metrics":{"a":2.0,"z":3.0},"model_id":"m1","ts":12.5},"job_id":4,"manual":false,"model_id":"m1","policy":"p","reason":"why"}"#
        );
        let mut back: HookInput = serde_json::from_str(&text).unwrap();
        back.retry_of = Some(3);
        let v: serde_json::Value = serde_json::from_str(&back.to_json()).unwrap();
        assert_eq!(v["retry_of"], 3);
        assert_eq!(v["event"]["meta"]["k"][1], "x");
        let trigger = HookInput {
            event: None,
            ..back
        };
        assert!(trigger.to_json().contains(r#""event":null"#));
    }
}
