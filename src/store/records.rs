//! The records the store persists. Changing one of them means a new record version byte or
//! a schema migration (see `migrations/`).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::policy::{Action, PolicyState};

/// Everything a model actor needs to continue after a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Events applied since the model was first seen.
    pub events: u64,
    pub first_seen: f64,
    pub last_seen: f64,
    /// Decisions (drift signals with an action) since first seen.
    pub decisions: u64,
    pub last_decision: Option<DecisionRecord>,
    pub policies: Vec<PolicyState>,
    /// Events left during which policies observe but do not fire (after a retrain).
    pub warmup_left: u64,
    /// Recent drift scores and accuracies, for the operator's sparklines.
    pub recent_drift: VecDeque<f32>,
    pub recent_accuracy: VecDeque<f32>,
    /// The probation's state (the metric's recent values, the running probation): stored as
    /// an extension after the record (see `codec::encode_model`), so that the record's own
    /// encoding, and every checkpoint written before, stays as it was.
    #[serde(skip)]
    pub probation: crate::probation::ModelProbation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub at: f64,
    pub policy: String,
    pub action: Action,
    pub reason: String,
}

/// One entry of a model's decision log (what `explain` shows), in the `explain` tree. An
/// enum so that other kinds of entry (probation verdicts) can join as new variants, added at
/// the end: bincode stores the variant's index, so the entries written before stay readable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ExplainEntry {
    Decision(DecisionEntry),
}

/// Decisions of one policy and action that came to the same outcome, one after the other,
/// as one entry: a policy over its threshold decides with every batch, and a cooldown holds
/// each of those decisions (see `command::decision_log`). What it says of the decision
/// (statistic, reason, event) is the first one's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionEntry {
    /// When the daemon made the first and the last of them (wall clock, Unix seconds).
    pub first_at: f64,
    pub at: f64,
    /// How many decisions the entry stands for.
    pub count: u64,
    pub policy: String,
    pub action: Action,
    /// What the policy compared (`None` where it has no such number: some detectors, a
    /// trigger).
    pub statistic: Option<f64>,
    pub threshold: Option<f64>,
    /// In words, as the hook reads it.
    pub reason: String,
    /// The event that tipped it, as JSON, as the hook reads it (`None` for a trigger).
    pub event: Option<String>,
    pub outcome: DecisionOutcome,
    /// More of the outcome in words (the loop guard's why, an escalation, an error), or empty.
    pub note: String,
}

/// What became of a decision: a job, or why none ran. New variants go at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecisionOutcome {
    /// It made this job (a retrain, or an escalation).
    Job(u64),
    /// The model's job already queued or running answers it.
    Absorbed(u64),
    Paused,
    Cooldown,
    LoopGuard,
    NoHook,
    Budget,
    /// The model was warming up after a reset or a retrain.
    Warmup,
    /// An operator's trigger over `hooks.max_triggers_per_hour`.
    TriggerLimit,
    /// The job could not be recorded (the store failed).
    Error,
}

impl DecisionOutcome {
    /// The word `explain` shows for it (a job's is `job`).
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionOutcome::Job(_) => "job",
            DecisionOutcome::Absorbed(_) => "absorbed",
            DecisionOutcome::Paused => "paused",
            DecisionOutcome::Cooldown => "cooldown",
            DecisionOutcome::LoopGuard => "loop_guard",
            DecisionOutcome::NoHook => "no_hook",
            DecisionOutcome::Budget => "budget",
            DecisionOutcome::Warmup => "warmup",
            DecisionOutcome::TriggerLimit => "trigger_limit",
            DecisionOutcome::Error => "error",
        }
    }

    /// The job it made or was absorbed by.
    pub fn job_id(self) -> Option<u64> {
        match self {
            DecisionOutcome::Job(id) | DecisionOutcome::Absorbed(id) => Some(id),
            _ => None,
        }
    }
}

/// The hook runner's per-model state that must survive restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunnerRecord {
    /// No new job starts for the model before this time (Unix seconds).
    pub cooldown_until: f64,
    /// A paused model records decisions but runs no hooks.
    pub paused: bool,
    /// The current budget day (whole days since the Unix epoch, UTC) and the jobs started for
    /// policy decisions in it (operators' triggers are not counted).
    pub budget_day: u64,
    pub budget_used: u32,
    /// The budget day in which the escalate hook was last called for an exhausted budget: it
    /// is called once a day, and a restart must not call it again.
    pub escalated_day: u64,
    /// When the last successful retrain ended, for which policy, and how far the loop guard
    /// has climbed since: the retrain's action, or `Escalate` once a policy that kept firing
    /// was handed to the escalate hook (it then holds that policy's decisions until the
    /// window has passed).
    pub last_success: Option<(f64, String, Action)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Interrupted,
    Superseded,
    /// Recorded but not run: a dry run, or an escalation with no escalate hook configured.
    Skipped,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Interrupted => "interrupted",
            JobState::Superseded => "superseded",
            JobState::Skipped => "skipped",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }
}

/// The identity of a hook's process group leader: the boot it ran in and its start time in
/// clock ticks since boot (`/proc/PID/stat` field 22). A process id is unique only within
/// those two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupLeader {
    pub boot_id: String,
    pub start_ticks: u64,
}

/// One entry of the job journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub job_id: u64,
    pub model_id: String,
    pub action: Action,
    pub policy: String,
    pub reason: String,
    /// The decision as JSON, which is also what the hook reads on stdin.
    pub decision: String,
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: u32,
    pub created: f64,
    pub started: Option<f64>,
    pub ended: Option<f64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The hook's process group while it runs, so a restart can find it.
    pub pgid: Option<i32>,
    /// Who led that group, so a restart never signals a stranger that reuses the number.
    pub leader: Option<GroupLeader>,
    pub command: Vec<String>,
    /// Why it failed or was skipped, in words.
    pub note: String,
    pub stdout_tail: String,
    pub stderr_tail: String,
    /// Every transition with its time, oldest first.
    pub transitions: Vec<(JobState, f64)>,
    /// The interrupted job this one redoes, if any.
    pub retry_of: Option<u64>,
}

impl Job {
    pub fn new(
        job_id: u64,
        model_id: &str,
        action: Action,
        policy: &str,
        reason: &str,
        decision: String,
        now: f64,
    ) -> Job {
        Job {
            job_id,
            model_id: model_id.to_owned(),
            action,
            policy: policy.to_owned(),
            reason: reason.to_owned(),
            decision,
            state: JobState::Queued,
            attempts: 0,
            created: now,
            started: None,
            ended: None,
            exit_code: None,
            signal: None,
            pgid: None,
            leader: None,
            command: Vec::new(),
            note: String::new(),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            transitions: vec![(JobState::Queued, now)],
            retry_of: None,
        }
    }

    pub fn transition(&mut self, state: JobState, now: f64) {
        self.state = state;
        self.transitions.push((state, now));
        if state.is_final() {
            self.ended = Some(now);
        }
    }
}

/// A retrain's probation as the job journal keeps it (the `probation` tree, by the retrain's
/// job id): written when the retrain succeeded and its probation began (or, for a decision's
/// retrain, when the job was created: `Pending`, with the baseline the decision froze), and
/// again at its verdict. New fields go at the end, in a new record version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbationRecord {
    pub model_id: String,
    pub state: ProbationState,
    pub metric: String,
    pub tolerance: f64,
    /// The baseline as the decision froze it, or as the verdict used it.
    pub baseline: Option<crate::probation::Sample>,
    pub candidate: Option<crate::probation::Sample>,
    pub z: Option<f64>,
    pub z_threshold: Option<f64>,
    pub cause: Option<crate::probation::Cause>,
    pub started_at: Option<f64>,
    pub decided_at: Option<f64>,
    /// The rollback or promote job the verdict started, if any.
    pub followed_by: Option<u64>,
}

/// A stored probation's state: the contract's five, and `Pending` before the retrain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbationState {
    /// The retrain's job was made by a decision and has not ended: the baseline is kept.
    Pending,
    OnProbation,
    Promoted,
    RolledBack,
    Inconclusive,
    Superseded,
}

impl ProbationState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbationState::Pending => "pending",
            ProbationState::OnProbation => "on_probation",
            ProbationState::Promoted => "promoted",
            ProbationState::RolledBack => "rolled_back",
            ProbationState::Inconclusive => "inconclusive",
            ProbationState::Superseded => "superseded",
        }
    }

    pub fn of(s: crate::probation::State) -> ProbationState {
        use crate::probation::State;
        match s {
            State::OnProbation => ProbationState::OnProbation,
            State::Promoted => ProbationState::Promoted,
            State::RolledBack => ProbationState::RolledBack,
            State::Inconclusive => ProbationState::Inconclusive,
            State::Superseded => ProbationState::Superseded,
        }
    }
}
