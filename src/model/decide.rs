//! What a batch of events makes a model decide, as a plain struct: the policies' verdicts
//! through [`super::advance`] (warm-up included), at most one decision per action per batch
//! for the runner (a flapping metric must not flood it; every fire is still counted), the
//! per-policy decision counts, and when a threshold or window policy starts and stops firing.
//! A drift during the warm-up decides nothing, but goes to the runner all the same (one per
//! action per batch, marked `warmup`), so that the model's decision log can say why no job ran.
//!
//! Architecture invariant: no I/O, no actor, no clock: [`Decider::apply`] returns what to
//! send and what to log, and the [`super::ModelActor`] sends and logs it.

use crate::config::ModelRule;
use crate::policy::{Action, Obs, PolicyKind, PolicySpec};
use crate::store::ModelRecord;

use super::{DecisionCount, Fired, advance};

/// A decision for the runner.
#[derive(Debug, PartialEq)]
pub struct Outgoing<'a> {
    pub spec: &'a PolicySpec,
    pub action: Action,
    pub reason: String,
    pub obs: &'a Obs,
    /// Made during the warm-up: the runner records it, and runs nothing.
    pub warmup: bool,
    /// The statistic and threshold it compared.
    pub compared: (Option<f64>, Option<f64>),
}

/// Something worth a log line.
#[derive(Debug, PartialEq)]
pub enum Note<'a> {
    /// A detector's warning (it informs, it does not act).
    Warning {
        spec: &'a PolicySpec,
        reason: String,
    },
    /// A detector flagged a drift (it does so once and restarts: each is worth a line).
    Drift {
        spec: &'a PolicySpec,
        action: Action,
        reason: String,
    },
    /// A threshold or window policy fired on an event where it had not fired on the one before.
    Started {
        spec: &'a PolicySpec,
        action: Action,
        reason: String,
    },
    /// It fired again (debug level: it fires on every event while its condition holds).
    Again {
        spec: &'a PolicySpec,
        action: Action,
        reason: String,
    },
    /// Its condition no longer holds, after `events` events in a row.
    Stopped { spec: &'a PolicySpec, events: u64 },
}

/// A model's decision bookkeeping since the daemon started.
#[derive(Debug, Default, Clone)]
pub struct Decider {
    /// Per policy and action: a handful of entries per model.
    pub counts: Vec<DecisionCount>,
    /// Per policy of the rule (by position): how many events in a row it has fired on (0: not
    /// firing).
    firing: Vec<u64>,
}

impl Decider {
    /// The policies start afresh (a reset, a changed rule): none is firing.
    pub fn stop_firing(&mut self) {
        self.firing.clear();
    }

    /// Applies `batch` to `record` under `rule`; returns the decisions to send (one per action
    /// at most) and the notes to log, in order.
    pub fn apply<'a>(
        &mut self,
        record: &mut ModelRecord,
        rule: Option<&'a ModelRule>,
        batch: &'a [Obs],
    ) -> (Vec<Outgoing<'a>>, Vec<Note<'a>>) {
        let specs = rule.map(|r| &r.policies[..]).unwrap_or(&[]);
        self.firing.resize(specs.len(), 0);
        let mut out: Vec<Outgoing<'a>> = Vec::new();
        let mut notes = Vec::new();
        let (counts, firing) = (&mut self.counts, &mut self.firing);
        advance(record, rule, batch, |fired: Fired<'a>| {
            let Fired {
                spec,
                action,
                reason,
                obs,
                warmup,
                compared,
            } = fired;
            let Some(i) = specs.iter().position(|s| std::ptr::eq(s, spec)) else {
                return;
            };
            let Some(action) = action else {
                notes.push(Note::Warning {
                    spec,
                    reason: reason.to_string(),
                });
                return;
            };
            if warmup {
                // Not counted, not a firing streak: only the runner's record of it.
                if !out.iter().any(|d| d.action == action && d.warmup) {
                    out.push(Outgoing {
                        spec,
                        action,
                        reason: reason.to_string(),
                        obs,
                        warmup,
                        compared,
                    });
                }
                return;
            }
            let reason = reason.to_string();
            if matches!(spec.kind, PolicyKind::Detector(_)) {
                notes.push(Note::Drift {
                    spec,
                    action,
                    reason: reason.clone(),
                });
            } else {
                notes.push(if firing[i] == 0 {
                    Note::Started {
                        spec,
                        action,
                        reason: reason.clone(),
                    }
                } else {
                    Note::Again {
                        spec,
                        action,
                        reason: reason.clone(),
                    }
                });
                firing[i] += 1;
            }
            match counts
                .iter_mut()
                .find(|c| c.policy == spec.name && c.action == action.as_str())
            {
                Some(c) => c.count += 1,
                None => counts.push(DecisionCount {
                    policy: spec.name.clone(),
                    action: action.as_str(),
                    count: 1,
                }),
            }
            if !out.iter().any(|d| d.action == action && !d.warmup) {
                out.push(Outgoing {
                    spec,
                    action,
                    reason,
                    obs,
                    warmup,
                    compared,
                });
            }
        });
        // A policy whose condition no longer holds (its streak broke) has stopped firing.
        for ((spec, state), n) in specs
            .iter()
            .zip(&record.policies)
            .zip(self.firing.iter_mut())
        {
            if *n > 0 && state.streak == 0 {
                notes.push(Note::Stopped { spec, events: *n });
                *n = 0;
            }
        }
        (out, notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Env};
    use crate::policy::bind_states;

    const CONFIG: &str = r#"
[[models]]
match = "*"
warmup_events = 2

[[models.policies]]
name = "limits"
kind = "static_threshold"
max_drift = 0.5
min_accuracy = 0.8

[[models.policies]]
name = "mean"
kind = "drift_window"
window = 2
threshold = 0.5
action = "full"
"#;

    fn setup() -> (ModelRule, ModelRecord) {
        let config = Config::from_toml(CONFIG, &Env::default()).unwrap();
        let rule = config.models[0].clone();
        let record = ModelRecord {
            policies: bind_states(&rule.policies, Vec::new()),
            warmup_left: rule.warmup_events,
            ..ModelRecord::default()
        };
        (rule, record)
    }

    fn obs(drift: f64, accuracy: f64) -> Obs {
        Obs {
            ts: 1.0,
            drift_score: Some(drift),
            accuracy: Some(accuracy),
            ..Obs::default()
        }
    }

    #[test]
    fn warm_up_then_one_decision_per_action_per_batch_every_fire_counted() {
        let (rule, mut record) = setup();
        let mut d = Decider::default();
        // The first two events are the warm-up: policies learn, nothing is decided. What
        // fired goes to the runner marked as such (one per action), to be logged as held.
        let warm = [obs(0.9, 0.1), obs(0.9, 0.1)];
        let (out, notes) = d.apply(&mut record, Some(&rule), &warm);
        let held: Vec<(&str, Action, bool)> = out
            .iter()
            .map(|o| (o.spec.name.as_str(), o.action, o.warmup))
            .collect();
        assert_eq!(held, vec![("limits", Action::Full, true)], "{out:?}");
        assert_eq!(out[0].compared, (Some(0.9), Some(0.5)));
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(record.decisions, 0);
        assert!(d.counts.is_empty(), "{:?}", d.counts);
        assert!(record.last_decision.is_none());
        // Three drifting, inaccurate events: "limits" fires full and fine_tune on each (the
        // static threshold says full for drift), "mean" fires full: one decision per action.
        let batch = [obs(0.9, 0.1), obs(0.9, 0.1), obs(0.9, 0.1)];
        let (out, notes) = d.apply(&mut record, Some(&rule), &batch);
        let actions: Vec<(Action, bool)> = out.iter().map(|o| (o.action, o.warmup)).collect();
        assert_eq!(actions, vec![(Action::Full, false)], "{out:?}");
        assert!(
            std::ptr::eq(out[0].obs, &batch[0]),
            "the first event that fired"
        );
        assert_eq!(out[0].spec.name, "limits");
        let total: u64 = d.counts.iter().map(|c| c.count).sum();
        assert_eq!(total, record.decisions);
        assert_eq!(total, 6, "{:?}", d.counts);
        // "limits" started firing once, then fired again.
        let started = notes
            .iter()
            .filter(|n| matches!(n, Note::Started { spec, .. } if spec.name == "limits"))
            .count();
        assert_eq!(started, 1, "{notes:?}");
        // A calm batch: both stop firing, each noted once with its streak.
        let calm = [obs(0.0, 1.0), obs(0.0, 1.0)];
        let (out, notes) = d.apply(&mut record, Some(&rule), &calm);
        assert!(out.is_empty());
        let stopped: Vec<(&str, u64)> = notes
            .iter()
            .filter_map(|n| match n {
                Note::Stopped { spec, events } => Some((spec.name.as_str(), *events)),
                _ => None,
            })
            .collect();
        assert_eq!(stopped, vec![("limits", 3), ("mean", 3)], "{notes:?}");
    }

    #[test]
    fn without_a_rule_events_are_counted_and_nothing_decided() {
        let (_, mut record) = setup();
        let mut d = Decider::default();
        let one = [obs(0.9, 0.1)];
        let (out, notes) = d.apply(&mut record, None, &one);
        assert!(out.is_empty() && notes.is_empty());
        assert_eq!(record.events, 1);
    }
}
