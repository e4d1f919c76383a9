//! Pure decision logic: given an observation and the time, does a policy fire?
//!
//! A model's policies are a list of [`PolicySpec`] (validated config) and a parallel list of
//! [`PolicyState`] (what the store persists). [`PolicyState::observe`] is the only entry point;
//! the daemon's model actors and the offline backtest both call it, so they cannot disagree.
//!
//! Architecture invariant: nothing in this module does I/O or reads a clock; time arrives as the
//! `now` argument (Unix seconds).

pub mod detect;

use std::collections::VecDeque;
use std::fmt;

use serde::{Deserialize, Serialize};

use detect::{Detector, DetectorParams, Signal};

/// What a decision asks the hook runner to do.
///
/// Policies and operators ask only for `Full` or `FineTune` ([`Action::parse`] knows no
/// other); `Escalate` is the hook runner's own answer when retraining is not the way out (the
/// daily budget is used up, or the loop guard found a retrain that did not hold), so it exists
/// only in the job journal and the escalate hook's environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Full,
    FineTune,
    /// Appended last: the store encodes variants by index.
    Escalate,
    /// Undoes a retrain (the `rollback` hook): an operator's `visutility rollback`.
    Rollback,
    /// Confirms a retrain (the `promote` hook).
    Promote,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Full => "full",
            Action::FineTune => "fine_tune",
            Action::Escalate => "escalate",
            Action::Rollback => "rollback",
            Action::Promote => "promote",
        }
    }

    /// A retrain: `full` or `fine_tune`.
    pub fn is_retrain(self) -> bool {
        matches!(self, Action::Full | Action::FineTune)
    }

    /// A policy's `action` or an operator's `trigger`: `full` or `fine_tune`, never
    /// `escalate`.
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "full" => Some(Action::Full),
            "fine_tune" => Some(Action::FineTune),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event as the policies see it: the metrics by name and the time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Obs {
    /// Unix seconds: the event's `ts`, or the time of receipt.
    pub ts: f64,
    /// Unix seconds: when the daemon received the event (what `last_seen` shows); 0 where
    /// that is not known (offline backtests), and then `ts` stands in.
    pub received: f64,
    pub drift_score: Option<f64>,
    pub accuracy: Option<f64>,
    pub error: Option<bool>,
    pub value: Option<f64>,
    /// Custom metrics, in the order the event gave them (usually none, so no allocation).
    pub metrics: Vec<(Box<str>, f64)>,
    /// The event's `meta`, raw JSON, kept for context in decisions.
    pub meta: Option<Box<str>>,
}

impl Obs {
    /// The observation of a decoded event; `receipt` is the time used when it has no `ts`.
    /// Custom metrics and `meta` allocate only when the event has them.
    pub fn from_event(ev: &crate::protocol::Event<'_>, receipt: f64) -> Obs {
        // With its own `ts`, the time of receipt is kept to whole milliseconds after it, so
        // the observation log stores it in a byte or three (see `store::wal`).
        let received = match ev.ts {
            Some(ts) => {
                let d = ((receipt - ts) * 1000.0).round();
                if d.abs() < 9.0e15 {
                    crate::store::wal::received_after(ts, d as i64)
                } else {
                    receipt
                }
            }
            None => receipt,
        };
        Obs {
            ts: ev.ts.unwrap_or(receipt),
            received,
            drift_score: ev.drift_score,
            accuracy: ev.accuracy,
            error: ev.error,
            value: ev.value,
            metrics: if ev.metrics.is_empty() {
                Vec::new()
            } else {
                ev.metrics.iter().map(|(k, v)| (k.into(), v)).collect()
            },
            meta: ev.meta.map(|m| m.get().into()),
        }
    }

    /// The value of a metric by the name policies use.
    pub fn metric(&self, name: &str) -> Option<f64> {
        match name {
            "drift_score" => self.drift_score,
            "accuracy" => self.accuracy,
            "error" => self.error.map(|e| if e { 1.0 } else { 0.0 }),
            "value" => self.value,
            _ => self
                .metrics
                .iter()
                .find(|(k, _)| &**k == name)
                .map(|(_, v)| *v),
        }
    }
}

/// A policy as validated from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySpec {
    /// Unique within a model's policies; defaults to the kind.
    pub name: String,
    pub kind: PolicyKind,
    /// The metric a single-metric policy reads (`static_threshold` reads two fixed ones).
    pub metric: String,
    /// What a drift asks for (`static_threshold` decides per condition).
    pub action: Action,
    /// The condition must hold on this many consecutive observations before the policy fires.
    pub for_events: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PolicyKind {
    /// `drift_score` above `max_drift` asks for a full retrain; `accuracy` below
    /// `min_accuracy` asks for a fine-tune.
    /// With `max`/`min`: the policy's `metric` above `max` or below `min` asks for its
    /// `action`.
    StaticThreshold {
        max_drift: Option<f64>,
        min_accuracy: Option<f64>,
        max: Option<f64>,
        min: Option<f64>,
    },
    /// The mean of the last `window` values of the metric above (or, with
    /// [`Direction::Below`], below) `threshold`.
    DriftWindow {
        window: usize,
        threshold: f64,
        direction: Direction,
    },
    Detector(DetectorParams),
}

/// Which side of a `drift_window` threshold is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    Above,
    Below,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Above => "above",
            Direction::Below => "below",
        }
    }

    /// Whether `x` is on the bad side of `threshold` (strictly).
    pub fn crosses(self, x: f64, threshold: f64) -> bool {
        match self {
            Direction::Above => x > threshold,
            Direction::Below => x < threshold,
        }
    }

    fn sign(self) -> char {
        match self {
            Direction::Above => '>',
            Direction::Below => '<',
        }
    }
}

impl PolicyKind {
    pub fn kind_name(&self) -> &'static str {
        match self {
            PolicyKind::StaticThreshold { .. } => "static_threshold",
            PolicyKind::DriftWindow { .. } => "drift_window",
            PolicyKind::Detector(p) => p.kind(),
        }
    }
}

/// What one observation made a policy conclude, when it concluded anything.
#[derive(Debug, Clone, PartialEq)]
pub struct Fire<'s> {
    /// `Drift` asks for `action`; `Warning` (detectors with a warning zone) only informs.
    pub signal: Signal,
    pub action: Option<Action>,
    pub reason: Reason<'s>,
}

/// Why a policy fired, in words when displayed. Kept as data until then: a policy over its
/// threshold, or a detector in its warning zone, fires on every event, and most of those
/// reasons are never read (one decision per batch goes to the hook runner; warnings are logged
/// at debug level).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason<'s> {
    MaxDrift {
        drift: f64,
        max: f64,
    },
    MinAccuracy {
        accuracy: f64,
        min: f64,
    },
    WindowMean {
        window: usize,
        metric: &'s str,
        mean: f64,
        threshold: f64,
        direction: Direction,
    },
    /// A `static_threshold` with `max`/`min` on its metric.
    Bound {
        metric: &'s str,
        value: f64,
        bound: f64,
        direction: Direction,
    },
    Detector {
        kind: &'static str,
        signal: Signal,
        metric: &'s str,
    },
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::MaxDrift { drift, max } => write!(f, "drift_score {drift} > max_drift {max}"),
            Reason::MinAccuracy { accuracy, min } => {
                write!(f, "accuracy {accuracy} < min_accuracy {min}")
            }
            Reason::WindowMean {
                window,
                metric,
                mean,
                threshold,
                direction,
            } => write!(
                f,
                "mean of the last {window} {metric} values {mean:.6} {} threshold {threshold}",
                direction.sign()
            ),
            Reason::Bound {
                metric,
                value,
                bound,
                direction,
            } => {
                let which = match direction {
                    Direction::Above => "max",
                    Direction::Below => "min",
                };
                write!(f, "{metric} {value} {} {which} {bound}", direction.sign())
            }
            Reason::Detector {
                kind,
                signal,
                metric,
            } => {
                let what = if signal == Signal::Warning {
                    "warning"
                } else {
                    "drift"
                };
                write!(f, "{kind} {what} on {metric}")
            }
        }
    }
}

/// A policy's persisted state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyState {
    pub name: String,
    /// Consecutive observations on which the condition held (for `for_events`).
    pub streak: u32,
    pub kind: StateKind,
    /// Values refused because they would have made the detector's state non-finite, since
    /// the model was loaded. Not persisted (the store's format is unchanged).
    #[serde(skip)]
    pub values_rejected: Tally,
}

/// A diagnostic count kept beside a state but not part of it: states compare equal whatever
/// their tallies (a replayed state equals the live one even if one was loaded mid-way).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally(pub u64);

impl PartialEq for Tally {
    fn eq(&self, _: &Tally) -> bool {
        true
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StateKind {
    StaticThreshold,
    DriftWindow {
        values: VecDeque<f64>,
        /// Running sum of `values`, recomputed exactly every `window` pushes so that rounding
        /// cannot accumulate.
        sum: f64,
        pushes: u64,
    },
    /// Boxed: some detectors carry sizeable fixed state, and a model has few policies.
    Detector(Box<Detector>),
}

impl PolicyState {
    /// A fresh state for `spec`.
    pub fn new(spec: &PolicySpec) -> Self {
        let kind = match &spec.kind {
            PolicyKind::StaticThreshold { .. } => StateKind::StaticThreshold,
            PolicyKind::DriftWindow { window, .. } => StateKind::DriftWindow {
                values: VecDeque::with_capacity(*window),
                sum: 0.0,
                pushes: 0,
            },
            PolicyKind::Detector(p) => StateKind::Detector(Box::new(p.build())),
        };
        PolicyState {
            name: spec.name.clone(),
            streak: 0,
            kind,
            values_rejected: Tally::default(),
        }
    }

    /// Whether this state can carry on under `spec` (same name, same kind and parameters).
    pub fn fits(&self, spec: &PolicySpec) -> bool {
        if self.name != spec.name {
            return false;
        }
        match (&self.kind, &spec.kind) {
            (StateKind::StaticThreshold, PolicyKind::StaticThreshold { .. }) => true,
            (StateKind::DriftWindow { .. }, PolicyKind::DriftWindow { .. }) => true,
            (StateKind::Detector(d), PolicyKind::Detector(p)) => d.matches(p),
            _ => false,
        }
    }

    /// Feeds one observation; returns what the policy concluded, if anything.
    pub fn observe<'s>(&mut self, spec: &'s PolicySpec, obs: &Obs) -> Option<Fire<'s>> {
        let fire = match (&mut self.kind, &spec.kind) {
            (
                StateKind::StaticThreshold,
                PolicyKind::StaticThreshold {
                    max_drift,
                    min_accuracy,
                    max,
                    min,
                },
            ) if max.is_some() || min.is_some() => {
                let x = obs.metric(&spec.metric)?;
                let over = max
                    .filter(|m| x > *m)
                    .map(|m| (m, Direction::Above))
                    .or_else(|| min.filter(|m| x < *m).map(|m| (m, Direction::Below)));
                // A static_threshold has either max/min on its metric or the classic pair.
                debug_assert!(max_drift.is_none() && min_accuracy.is_none());
                over.map(|(bound, direction)| Fire {
                    signal: Signal::Drift,
                    action: Some(spec.action),
                    reason: Reason::Bound {
                        metric: &spec.metric,
                        value: x,
                        bound,
                        direction,
                    },
                })
            }
            (
                StateKind::StaticThreshold,
                PolicyKind::StaticThreshold {
                    max_drift,
                    min_accuracy,
                    ..
                },
            ) => {
                let drift = obs.drift_score.zip(*max_drift).filter(|(d, m)| d > m);
                let acc = obs.accuracy.zip(*min_accuracy).filter(|(a, m)| a < m);
                if obs.drift_score.is_none() && obs.accuracy.is_none() {
                    // Nothing this policy reads: the streak neither grows nor breaks.
                    return None;
                }
                match (drift, acc) {
                    (Some((d, m)), _) => Some(Fire {
                        signal: Signal::Drift,
                        action: Some(Action::Full),
                        reason: Reason::MaxDrift { drift: d, max: m },
                    }),
                    (None, Some((a, m))) => Some(Fire {
                        signal: Signal::Drift,
                        action: Some(Action::FineTune),
                        reason: Reason::MinAccuracy {
                            accuracy: a,
                            min: m,
                        },
                    }),
                    (None, None) => None,
                }
            }
            (
                StateKind::DriftWindow {
                    values,
                    sum,
                    pushes,
                },
                PolicyKind::DriftWindow {
                    window,
                    threshold,
                    direction,
                },
            ) => {
                let x = obs.metric(&spec.metric)?;
                while values.len() >= *window {
                    if let Some(old) = values.pop_front() {
                        *sum -= old;
                    }
                }
                values.push_back(x);
                *sum += x;
                *pushes += 1;
                if *pushes % (*window as u64).max(1) == 0 {
                    *sum = values.iter().sum();
                }
                let mean = *sum / values.len() as f64;
                (values.len() >= *window && direction.crosses(mean, *threshold)).then(|| Fire {
                    signal: Signal::Drift,
                    action: Some(spec.action),
                    reason: Reason::WindowMean {
                        window: *window,
                        metric: &spec.metric,
                        mean,
                        threshold: *threshold,
                        direction: *direction,
                    },
                })
            }
            (StateKind::Detector(det), PolicyKind::Detector(_)) => {
                let x = obs.metric(&spec.metric)?;
                if !x.is_finite() {
                    return None;
                }
                let Some(signal) = det.update_finite(x) else {
                    // Refused: the state stays as it was, the streak neither grows nor breaks.
                    self.values_rejected.0 += 1;
                    return None;
                };
                match signal {
                    Signal::None => None,
                    Signal::Warning => {
                        // A warning is reported as it happens and never debounced: it
                        // informs, it does not act.
                        return Some(Fire {
                            signal: Signal::Warning,
                            action: None,
                            reason: Reason::Detector {
                                kind: spec.kind.kind_name(),
                                signal: Signal::Warning,
                                metric: &spec.metric,
                            },
                        });
                    }
                    Signal::Drift => Some(Fire {
                        signal: Signal::Drift,
                        action: Some(spec.action),
                        reason: Reason::Detector {
                            kind: spec.kind.kind_name(),
                            signal: Signal::Drift,
                            metric: &spec.metric,
                        },
                    }),
                }
            }
            // A state that does not fit its spec is replaced on bind; reaching here means a
            // bug, and a policy that decides nothing is the safe answer.
            _ => None,
        };
        match fire {
            Some(f) => {
                self.streak = self.streak.saturating_add(1);
                (self.streak >= spec.for_events.max(1)).then_some(f)
            }
            None => {
                self.streak = 0;
                None
            }
        }
    }

    /// One short line for operators.
    pub fn summary(&self, spec: &PolicySpec) -> String {
        match (&self.kind, &spec.kind) {
            (
                StateKind::StaticThreshold,
                PolicyKind::StaticThreshold {
                    max_drift,
                    min_accuracy,
                    max,
                    min,
                },
            ) => {
                let mut parts = Vec::new();
                if let Some(m) = max {
                    parts.push(format!("{} max {m}", spec.metric));
                }
                if let Some(m) = min {
                    parts.push(format!("{} min {m}", spec.metric));
                }
                if let Some(m) = max_drift {
                    parts.push(format!("max_drift {m}"));
                }
                if let Some(m) = min_accuracy {
                    parts.push(format!("min_accuracy {m}"));
                }
                parts.join(", ")
            }
            (
                StateKind::DriftWindow { values, sum, .. },
                PolicyKind::DriftWindow {
                    window,
                    threshold,
                    direction,
                },
            ) => {
                let direction = match direction {
                    Direction::Above => "",
                    Direction::Below => "below ",
                };
                let mean = if values.is_empty() {
                    0.0
                } else {
                    sum / values.len() as f64
                };
                format!(
                    "window {}/{window}, mean {mean:.4} ({direction}threshold {threshold})",
                    values.len()
                )
            }
            (StateKind::Detector(d), _) => d.summary(),
            _ => String::new(),
        }
    }
}

/// A policy's state as named numbers, in a fixed order: `models --json` shows it as an object
/// (`summary` is its text form), `backtest --detail` takes `statistic` and `threshold` from it.
/// Only finite numbers are kept (a detector's "none yet" minimum is infinite).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamedNumbers(pub Vec<(&'static str, f64)>);

impl NamedNumbers {
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }
}

impl Serialize for NamedNumbers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl Reason<'_> {
    /// The number the policy compared and what it compared it with, where the reason says.
    pub fn statistic(&self) -> Option<(f64, f64)> {
        match *self {
            Reason::MaxDrift { drift, max } => Some((drift, max)),
            Reason::MinAccuracy { accuracy, min } => Some((accuracy, min)),
            Reason::WindowMean {
                mean, threshold, ..
            } => Some((mean, threshold)),
            Reason::Bound { value, bound, .. } => Some((value, bound)),
            Reason::Detector { .. } => None,
        }
    }
}

/// The number a policy compared after an event and what it compared it with: what a signal
/// line of `backtest --detail`, the report and `explain` show as `statistic` and `threshold`.
/// From the reason when the policy fired (a window's mean and threshold, the value past a
/// static bound), else from its state (asked of `state` only then): a window's mean and
/// threshold, a detector's `statistic` and `threshold` where it has that pair (Page-Hinkley,
/// CUSUM, KSWIN, DDM, EDDM; ADWIN and HDDM have none), a static threshold's metric and bound
/// (`max_drift` before `min_accuracy`, `max` before `min`).
pub fn compared(
    spec: &PolicySpec,
    reason: Option<&Reason<'_>>,
    state: impl FnOnce() -> NamedNumbers,
    obs: &Obs,
) -> (Option<f64>, Option<f64>) {
    if let Some((s, t)) = reason.and_then(Reason::statistic) {
        return (Some(s), Some(t));
    }
    match &spec.kind {
        PolicyKind::StaticThreshold {
            max_drift,
            min_accuracy,
            max,
            min,
        } => match (max.or(*min), max_drift) {
            (Some(bound), _) => (obs.metric(&spec.metric), Some(bound)),
            (None, Some(m)) => (obs.drift_score, Some(*m)),
            (None, None) => (obs.accuracy, *min_accuracy),
        },
        PolicyKind::DriftWindow { .. } => {
            let now = state();
            (now.get("mean"), now.get("threshold"))
        }
        PolicyKind::Detector(_) => {
            let now = state();
            (now.get("statistic"), now.get("threshold"))
        }
    }
}

impl PolicyState {
    /// The state as named numbers (what `summary` says in words): a window's fill, mean and
    /// threshold; a detector's own numbers (ADWIN's width and estimate, Page-Hinkley's
    /// statistic and threshold, ...) and, for those with a warning zone, `warning` (0 or 1);
    /// every policy's `streak` (for `for_events`).
    pub fn state(&self, spec: &PolicySpec) -> NamedNumbers {
        let mut out: Vec<(&'static str, f64)> = Vec::new();
        match (&self.kind, &spec.kind) {
            (
                StateKind::StaticThreshold,
                PolicyKind::StaticThreshold {
                    max_drift,
                    min_accuracy,
                    max,
                    min,
                },
            ) => {
                for (k, v) in [
                    ("max", max),
                    ("min", min),
                    ("max_drift", max_drift),
                    ("min_accuracy", min_accuracy),
                ] {
                    if let Some(v) = v {
                        out.push((k, *v));
                    }
                }
            }
            (
                StateKind::DriftWindow { values, sum, .. },
                PolicyKind::DriftWindow {
                    window, threshold, ..
                },
            ) => {
                let mean = if values.is_empty() {
                    0.0
                } else {
                    sum / values.len() as f64
                };
                out.extend([
                    ("fill", values.len() as f64),
                    ("window", *window as f64),
                    ("mean", mean),
                    ("threshold", *threshold),
                ]);
            }
            (StateKind::Detector(d), PolicyKind::Detector(p)) => {
                out = d.state();
                if p.has_warning() {
                    out.push(("warning", f64::from(u8::from(d.warning_detected()))));
                }
            }
            _ => {}
        }
        out.push(("streak", f64::from(self.streak)));
        out.retain(|(_, v)| v.is_finite());
        NamedNumbers(out)
    }
}

/// Brings persisted states in line with the current specs: a state that still fits is kept
/// (in the order of the specs), anything else starts fresh.
pub fn bind_states(specs: &[PolicySpec], mut old: Vec<PolicyState>) -> Vec<PolicyState> {
    specs
        .iter()
        .map(|spec| match old.iter().position(|s| s.fits(spec)) {
            Some(i) => old.swap_remove(i),
            None => PolicyState::new(spec),
        })
        .collect()
}

/// Why a policy's state cannot carry over a reload from `old` (the policy of that name
/// before, if any) to `new`; `None` when it can: only a policy whose kind, metric and every
/// parameter are unchanged keeps its state (a window of drift scores must not go on as a
/// window of accuracies).
pub fn reset_reason(old: Option<&PolicySpec>, new: &PolicySpec) -> Option<String> {
    let Some(old) = old else {
        return Some("new policy".to_owned());
    };
    if old == new {
        None
    } else if old.kind.kind_name() != new.kind.kind_name() {
        Some(format!(
            "kind changed from {} to {}",
            old.kind.kind_name(),
            new.kind.kind_name()
        ))
    } else if old.metric != new.metric {
        Some(format!(
            "metric changed from {} to {}",
            old.metric, new.metric
        ))
    } else {
        Some("parameters changed".to_owned())
    }
}

/// The states for `new_specs` after a reload from `old_specs`: a policy keeps its state only
/// when [`reset_reason`] finds nothing changed; any other starts fresh.
pub fn rebind_states(
    old_specs: &[PolicySpec],
    new_specs: &[PolicySpec],
    mut old: Vec<PolicyState>,
) -> Vec<PolicyState> {
    new_specs
        .iter()
        .map(|spec| {
            let before = old_specs.iter().find(|s| s.name == spec.name);
            if reset_reason(before, spec).is_none()
                && let Some(i) = old.iter().position(|s| s.fits(spec))
            {
                old.swap_remove(i)
            } else {
                PolicyState::new(spec)
            }
        })
        .collect()
}

#[cfg(test)]
mod state_tests {
    use super::*;

    fn spec(kind: PolicyKind) -> PolicySpec {
        PolicySpec {
            name: "p".into(),
            kind,
            metric: "drift_score".into(),
            action: Action::Full,
            for_events: 1,
        }
    }

    fn obs(x: f64) -> Obs {
        Obs {
            drift_score: Some(x),
            ..Obs::default()
        }
    }

    /// Issue 13.4: a policy's state as named numbers, finite only.
    #[test]
    fn state_is_named_numbers() {
        let s = spec(PolicyKind::DriftWindow {
            window: 4,
            threshold: 0.3,
            direction: Direction::Above,
        });
        let mut st = PolicyState::new(&s);
        st.observe(&s, &obs(0.2));
        st.observe(&s, &obs(0.4));
        let n = st.state(&s);
        assert_eq!(n.get("fill"), Some(2.0));
        assert_eq!(n.get("window"), Some(4.0));
        assert!((n.get("mean").unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(n.get("threshold"), Some(0.3));
        assert_eq!(n.get("streak"), Some(0.0));
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            r#"{"fill":2.0,"window":4.0,"mean":0.30000000000000004,"threshold":0.3,"streak":0.0}"#
        );

        // A fresh DDM holds infinite minimums: left out. It has a warning zone.
        let ddm = detect::DetectorParams::parse("ddm", serde_json::json!({}))
            .unwrap()
            .unwrap();
        let s = spec(PolicyKind::Detector(ddm));
        let n = PolicyState::new(&s).state(&s);
        assert_eq!(n.get("p_min"), None);
        assert_eq!(n.get("warning"), Some(0.0));
        assert!(n.0.iter().all(|(_, v)| v.is_finite()));

        let ph = detect::DetectorParams::parse("page_hinkley", serde_json::json!({}))
            .unwrap()
            .unwrap();
        let s = spec(PolicyKind::Detector(ph));
        let mut st = PolicyState::new(&s);
        st.observe(&s, &obs(1.0));
        let n = st.state(&s);
        assert_eq!(n.get("threshold"), Some(50.0));
        assert!(n.get("statistic").is_some());
        assert_eq!(n.get("warning"), None);
    }
}
