//! The closed set of messages the [`super::CommandActor`] handles.

use std::sync::Arc;

use actix::Message;

use crate::config::HooksConfig;
use crate::policy::Action;
use crate::probation::{Probation, Sample};
use crate::store::ExplainEntry;

use super::{CommandError, HookOutcome, RunnerStatus};

/// A policy (or an operator) asks for a retrain of a model.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Decision {
    pub model_id: Arc<str>,
    pub policy: String,
    pub action: Action,
    pub reason: String,
    /// The event that caused it, serialized once as the hook reads it on stdin
    /// ([`super::input::HookEvent`]); `None` for an operator's trigger.
    pub event: Option<Box<serde_json::value::RawValue>>,
    /// Unix seconds (the event's `ts`; a trigger's time of asking).
    pub at: f64,
    /// An operator's `trigger`: bypasses cooldown and budget, not pause.
    pub manual: bool,
    /// The model's rule's `loop_window_s` (0: no loop guard), carried so that the runner
    /// needs no lookup of the model's rule.
    pub loop_window_s: u64,
    /// What the policy compared, for the model's decision log (`None` where it has no such
    /// number, and for a trigger).
    pub statistic: Option<f64>,
    pub threshold: Option<f64>,
    /// Made during the model's warm-up: recorded in its decision log, nothing runs.
    pub warmup: bool,
    /// For a model whose rule has a probation: the baseline the decision froze (the last
    /// `events` values of the probation's metric, or the last promoted candidate), kept with
    /// the retrain job the decision makes.
    pub baseline: Option<Sample>,
}

impl Decision {
    /// An operator's `trigger` of `action` for `model_id`, now.
    pub fn manual(model_id: &str, action: Action) -> Decision {
        Decision {
            model_id: model_id.into(),
            policy: "manual".into(),
            action,
            reason: "triggered by an operator".into(),
            event: None,
            at: crate::clock::wall(),
            manual: true,
            loop_window_s: 0,
            statistic: None,
            threshold: None,
            warmup: false,
            baseline: None,
        }
    }
}

/// A model's probation came to a verdict (or the model reports, at load, the verdict it holds:
/// the command actor acts on each retrain's verdict once).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ProbationVerdict {
    pub model_id: Arc<str>,
    pub metric: String,
    pub tolerance: f64,
    /// The probation as it ended: its job, state, cause, samples and z.
    pub probation: Probation,
    /// `on_inconclusive = "escalate"`: a person should hear of it.
    pub escalate: bool,
}

/// `visutility promote MODEL`: end the model's probation now and keep the candidate;
/// answered with the retrain's job id.
#[derive(Message)]
#[rtype(result = "Result<u64, CommandError>")]
pub struct Promote {
    pub model_id: String,
}

/// `visutility rollback MODEL`: roll back the model's latest succeeded retrain that has a
/// receipt; answered with the rollback job's id.
#[derive(Message)]
#[rtype(result = "Result<u64, CommandError>")]
pub struct RollBack {
    pub model_id: String,
}

/// An operator's `trigger`: like a decision, answered with the job id it created.
#[derive(Message)]
#[rtype(result = "Result<u64, CommandError>")]
pub struct Trigger(pub Decision);

/// A hook process ended (or could not start).
#[derive(Message)]
#[rtype(result = "()")]
pub struct HookFinished {
    pub job_id: u64,
    pub outcome: HookOutcome,
}

/// `pause` / `resume`: persisted per model.
#[derive(Message)]
#[rtype(result = "Result<(), CommandError>")]
pub struct SetPaused {
    pub model_id: String,
    pub paused: bool,
}

/// `forget`, first step: refused while the model has a job running or queued; otherwise its
/// runner state (cooldown, pause, budget, trigger count, loop guard) is dropped.
#[derive(Message)]
#[rtype(result = "Result<(), CommandError>")]
pub struct ForgetRunner {
    pub model_id: String,
}

/// `explain`: the model's decision log, newest entry first, at most `limit` entries, each
/// with its number (running entries with the count they have now).
#[derive(Message)]
#[rtype(result = "Result<Vec<(u64, ExplainEntry)>, CommandError>")]
pub struct GetExplain {
    pub model_id: String,
    pub limit: usize,
}

/// Counts and per-model runner state, for `status` and `models`.
#[derive(Message)]
#[rtype(result = "RunnerStatus")]
pub struct GetStatus;

/// The config was reloaded.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconfigure(pub Arc<HooksConfig>);

/// The daemon is stopping: stop running hooks and mark their jobs interrupted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Watchdog heartbeat.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;
