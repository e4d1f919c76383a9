//! The command actor: turns decisions into jobs and runs the operator's hooks.
//!
//! Rules it keeps, whatever the policies say:
//! - one model never has two jobs running at once: a running or queued job absorbs new
//!   decisions, except that a full retrain supersedes a queued fine-tune, and an operator's
//!   `trigger` queues one job behind a running one;
//! - at most `max_concurrent` hooks run at the same time; the rest wait in a queue;
//! - after a retrain for a model ends, `cooldown_s` passes before the next (persisted, so a
//!   restart does not reset it);
//! - a failing hook is retried `retries` times with exponential backoff and jitter;
//! - at most `max_jobs_per_day` jobs per model run for policy decisions in a UTC day; past
//!   that, decisions are recorded (by the model) but run nothing, and the `escalate` hook is
//!   called once that day;
//! - at most `max_triggers_per_hour` operator `trigger`s per model start a job in any hour
//!   (a sliding window, kept in memory), so that a script looping on `trigger` cannot storm
//!   past the cooldown and the budget, which a trigger bypasses;
//! - the loop guard: a policy that fires again within its rule's `loop_window_s` after a
//!   successful retrain it caused climbs a ladder instead of looping: a fine-tune becomes a
//!   full retrain, a full retrain becomes a call of the `escalate` hook, and after that the
//!   policy's decisions are held until the window has passed;
//! - every job is written to the store *before* its hook starts, and every transition after.
//!
//! Where they live: the rules of one decision are plain functions in [`rules`], the jobs
//! around them (one per model, queue, retries, trigger limit) a plain struct in [`scheduler`],
//! both with the time passed in and unit-tested without a daemon; the hook's stdin is typed
//! in [`input`]; the journal and the reconciliation after a crash are in `journal.rs`; the
//! pump, starting a hook and its end in `run.rs`; the decision log's coalescing in
//! [`decision_log`]; this file is the actor: messages, decisions, jobs. The runner knows nothing of model
//! actors: the daemon hands it an [`OnRetrained`] callback.
//!
//! At start, [`CommandActor::reconcile`] finds jobs a crash left `running`: they are marked
//! `interrupted`, their process group is killed if it outlived the daemon (the model's next
//! job waits until the group is gone, so two runs never overlap), and a new job redoes the
//! work, or none, by `hooks.on_interrupted`.

pub mod decision_log;
mod handlers;
pub mod hook;
pub mod input;
mod journal;
pub mod messages;
mod probation;
pub mod rollback;
pub mod rules;
mod run;
pub mod scheduler;
pub mod stats;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;

use crate::clock::Now;
use crate::config::HooksConfig;
use crate::policy::Action;
use crate::store::{
    DecisionEntry, DecisionOutcome, ExplainEntry, Job, JobState, Store, StoreError,
};

pub use hook::{HookEnd, HookOutcome};
pub use messages::*;
use scheduler::{Plan, Scheduler};

/// How many jobs the journal keeps.
const JOURNAL_KEEP: usize = 10_000;
/// How often the queue looks again at a hook group that outlived a restart.
const LINGER_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot record the job")]
    Store(#[from] StoreError),
    #[error("no hook is configured for action {0}")]
    NoHook(Action),
    #[error("model {0} is paused")]
    Paused(String),
    #[error(
        "model {model} was triggered {limit} times in the last hour (hooks.max_triggers_per_hour); try again in {retry_in_s} s"
    )]
    TriggerLimit {
        model: String,
        limit: u32,
        retry_in_s: u64,
    },
    #[error("model {model} has a job {state} (job {job_id}); roll back once it has ended")]
    RollbackBusy {
        model: String,
        job_id: u64,
        state: &'static str,
    },
    #[error("nothing to roll back for model {model}: {why}")]
    NothingToRollBack { model: String, why: String },
    #[error("nothing to promote for model {0}: it is not on probation")]
    NotOnProbation(String),
    #[error("model {model} has a job {state} (job {job_id}); forget it once the job has ended")]
    JobActive {
        model: String,
        job_id: u64,
        state: &'static str,
    },
}

/// What `status` shows of the runner.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunnerStatus {
    pub running: usize,
    pub queued: usize,
    pub paused: Vec<String>,
    pub jobs_by_outcome: HashMap<&'static str, u64>,
    /// The same jobs by `(action, outcome)`, sorted (for `metrics`; `status` shows the sums).
    #[serde(skip)]
    pub jobs_by_action: Vec<((&'static str, &'static str), u64)>,
    pub hook_durations: stats::DurationHistogram,
    /// Models on probation now.
    pub on_probation: usize,
    /// Probations ended since start, by outcome (every outcome listed).
    pub probations: Vec<(&'static str, u64)>,
}

/// What the runner tells a model (through the daemon's [`OnRetrained`] callback).
#[derive(Debug, Clone)]
pub enum ModelNotice<'a> {
    /// A retrain succeeded (before its success is journaled): the model's policies reset when
    /// its rule says `reset_on_retrain`, and for a rule with a probation the retrain's
    /// probation starts, judged against `baseline` (the one its decision froze, if any).
    Retrained {
        model_id: &'a str,
        job_id: u64,
        baseline: Option<crate::probation::Sample>,
        at: f64,
        /// Only for the probation: nothing resets when the model's rule has none. For a
        /// probation the journal holds, sent again at start (the model resumes it, or starts
        /// it if a power cut took its start), and for a dry run's retrain.
        probation_only: bool,
    },
    /// A rollback succeeded: the model's policies reset, with warm-up.
    RolledBack { model_id: &'a str },
    /// An operator ended the probation of retrain `job_id` (`promote`, `rollback`).
    ProbationEnded {
        model_id: &'a str,
        job_id: u64,
        state: crate::probation::State,
        cause: Option<crate::probation::Cause>,
        at: f64,
    },
}

/// A probation began: what the runner records of it (from the model's rule).
#[derive(Debug, Clone, PartialEq)]
pub struct ProbationBegun {
    pub metric: String,
    pub tolerance: f64,
}

/// Called when the runner has news for a model (see [`ModelNotice`]); for a retrain, answers
/// whether the model's rule starts a probation. The runner knows nothing of models beyond
/// this.
pub type OnRetrained = Box<dyn Fn(ModelNotice<'_>) -> Option<ProbationBegun> + Send>;

pub struct CommandActor {
    store: Store,
    /// Jobs, queue and runner states: the rules as plain code.
    sched: Scheduler,
    on_retrained: OnRetrained,
    /// Jobs that reached an end state since start, by `(action, outcome)`.
    outcomes: HashMap<(&'static str, &'static str), u64>,
    /// How long finished hook runs took, for `metrics`.
    hook_durations: stats::DurationHistogram,
    /// Hook process groups from before a restart that outlived the daemon: the model's next
    /// job waits until its group is gone.
    lingering: Vec<Lingering>,
    /// When the queue is already due to be looked at again (boot clock), so wake-ups do not
    /// pile up.
    wake_at: Option<f64>,
    /// Each model's decision log: its running entries, written by interval.
    log: decision_log::DecisionLog,
    /// A write of the decision logs' running entries is scheduled.
    log_wake: bool,
    /// Models on probation, with their retrain's job id.
    on_probation: HashMap<String, u64>,
    /// Probations ended since start, by outcome.
    probation_outcomes: HashMap<&'static str, u64>,
}

struct Lingering {
    model_id: String,
    pgid: i32,
    since: Instant,
    /// SIGKILL sent (SIGTERM went first, at `since`).
    killed: bool,
}

impl CommandActor {
    pub fn new(hooks: Arc<HooksConfig>, store: Store, on_retrained: OnRetrained) -> CommandActor {
        let log = decision_log::DecisionLog::new(store.flush_interval().as_secs_f64());
        CommandActor {
            store,
            sched: Scheduler::new(hooks),
            on_retrained,
            outcomes: HashMap::new(),
            hook_durations: stats::DurationHistogram::default(),
            lingering: Vec::new(),
            wake_at: None,
            log,
            log_wake: false,
            on_probation: HashMap::new(),
            probation_outcomes: HashMap::new(),
        }
    }

    fn hooks(&self) -> Arc<HooksConfig> {
        self.sched.hooks().clone()
    }

    /// Makes sure the model's runner state is in memory, read from the store if need be.
    fn ensure_runner(&mut self, model_id: &str, now: Now) {
        if self.sched.has_runner(model_id) {
            return;
        }
        let rec = match self.store.load_runner(model_id) {
            Ok(r) => r.unwrap_or_default(),
            Err(error) => {
                tracing::error!(model_id, error = %error, "cannot load runner state; using defaults");
                Default::default()
            }
        };
        self.sched.load_runner(model_id, &rec, now);
    }

    /// Writes the model's runner state; it becomes durable with the next journal write.
    fn save_runner(&mut self, model_id: &str, now: Now) {
        self.ensure_runner(model_id, now);
        let rec = self.sched.runner_record(model_id, now);
        if let Err(error) = self.store.save_runner(model_id, &rec) {
            tracing::error!(model_id, error = %error, "cannot persist runner state");
        }
    }

    /// Accepts a decision: returns the job it created (for an operator's trigger, also the
    /// queued job that answers it), and records what became of it in the model's decision log.
    fn decide(
        &mut self,
        d: Decision,
        ctx: &mut Context<Self>,
    ) -> Result<Option<u64>, CommandError> {
        let now = Now::read();
        let (outcome, note, result) = if d.warmup {
            tracing::debug!(model_id = %d.model_id, policy = %d.policy, action = %d.action, "decision during the warm-up: recorded, no hook run");
            (DecisionOutcome::Warmup, String::new(), Ok(None))
        } else {
            self.act(&d, now, ctx)
        };
        self.record(&d, outcome, note, now, ctx);
        result
    }

    /// What becomes of a decision: its outcome for the decision log, with more of it in words
    /// (or nothing), and the job for the caller.
    fn act(
        &mut self,
        d: &Decision,
        now: Now,
        ctx: &mut Context<Self>,
    ) -> (DecisionOutcome, String, Result<Option<u64>, CommandError>) {
        let model: &str = &d.model_id;
        self.ensure_runner(model, now);
        let ask = rules::Ask {
            policy: &d.policy,
            action: d.action,
            reason: &d.reason,
            manual: d.manual,
        };
        let (action, reason, cause) = match self.sched.plan(model, ask, d.loop_window_s, now) {
            Plan::Absorbed(job_id) => {
                tracing::debug!(
                    model_id = model,
                    job_id,
                    "decision absorbed by the model's job"
                );
                let answer = d.manual.then_some(job_id);
                return (DecisionOutcome::Absorbed(job_id), String::new(), Ok(answer));
            }
            Plan::Held(hold) => {
                let (outcome, note) = match &hold {
                    rules::Hold::Paused => (DecisionOutcome::Paused, String::new()),
                    rules::Hold::Cooldown { .. } => (DecisionOutcome::Cooldown, String::new()),
                    rules::Hold::LoopGuard(why) => (DecisionOutcome::LoopGuard, why.clone()),
                    rules::Hold::NoHook(_) => (DecisionOutcome::NoHook, String::new()),
                    rules::Hold::Budget { .. } => (DecisionOutcome::Budget, String::new()),
                };
                return (outcome, note, self.held(d, hold));
            }
            Plan::TriggerLimit { limit, retry_in_s } => {
                tracing::warn!(
                    model_id = model,
                    limit,
                    retry_in_s,
                    "trigger refused: hooks.max_triggers_per_hour reached"
                );
                let refused = CommandError::TriggerLimit {
                    model: model.into(),
                    limit,
                    retry_in_s,
                };
                return (DecisionOutcome::TriggerLimit, String::new(), Err(refused));
            }
            Plan::Job {
                action,
                reason,
                cause,
                superseded,
            } => {
                if let Some(old) = superseded {
                    self.journal_logged(&old);
                    self.count(&old);
                    tracing::info!(
                        model_id = model,
                        job_id = old.job_id,
                        "queued fine-tune superseded by a full retrain"
                    );
                }
                (action, reason, cause)
            }
        };
        let hooks = self.hooks();
        let (submitted, note) = if let Some(cause) = cause {
            if cause == "budget" {
                tracing::warn!(
                    model_id = model,
                    budget = hooks.max_jobs_per_day,
                    "daily job budget used up: calling the escalate hook"
                );
            } else {
                tracing::warn!(model_id = model, policy = %d.policy, why = %reason, "loop guard: calling the escalate hook instead of retraining again");
            }
            let note = format!("escalated ({cause}): {reason}");
            (self.escalate(d, cause, reason, now, ctx), note)
        } else {
            let note = if action != d.action {
                tracing::warn!(model_id = model, policy = %d.policy, from = %d.action, to = %action, why = %reason, "loop guard: escalating the retrain");
                format!("raised to {action} (loop_guard): {reason}")
            } else {
                String::new()
            };
            let submitted = match hooks.hook(action) {
                Some(spec) => self
                    .new_job(d, action, &reason, None, now)
                    .map_err(CommandError::from)
                    .and_then(|job| {
                        self.keep_baseline(&job, d.baseline);
                        self.submit(job, spec.command.clone(), now, ctx)
                    }),
                // rules::decide checked it; a hook cannot vanish in between.
                None => Ok(None),
            };
            (submitted, note)
        };
        if d.manual && matches!(submitted, Ok(Some(_))) {
            self.sched.note_trigger(model, now);
        }
        match submitted {
            Ok(Some(job_id)) => (DecisionOutcome::Job(job_id), note, Ok(Some(job_id))),
            Ok(None) => (DecisionOutcome::NoHook, note, Ok(None)),
            Err(error) => (DecisionOutcome::Error, error_chain(&error), Err(error)),
        }
    }

    /// Writes a decision to the model's log (see [`decision_log`]): a new entry at once, the
    /// running one's count at most once per flush interval.
    fn record(
        &mut self,
        d: &Decision,
        outcome: DecisionOutcome,
        note: String,
        now: Now,
        ctx: &mut Context<Self>,
    ) {
        let model: &str = &d.model_id;
        let entry = DecisionEntry {
            first_at: now.wall,
            at: now.wall,
            count: 1,
            policy: d.policy.clone(),
            action: d.action,
            statistic: d.statistic,
            threshold: d.threshold,
            reason: d.reason.clone(),
            event: d.event.as_ref().map(|e| e.get().to_owned()),
            outcome,
            note,
        };
        self.log_entry(model, entry, now);
        self.schedule_log_write(ctx);
    }

    /// Adds an entry to the model's decision log (read from the store first if need be).
    fn log_entry(&mut self, model: &str, entry: DecisionEntry, now: Now) {
        if !self.log.knows(model) {
            match self.store.last_explain_seq(model) {
                Ok(seq) => self.log.load(model, seq),
                Err(error) => {
                    // Only with a failing store, which logs its error itself and shows it in
                    // `status`: one line per decision would bury the journal.
                    tracing::debug!(model_id = model, error = %error, "cannot read the model's decision log; not recording the entry");
                    return;
                }
            }
        }
        let writes = self.log.record(model, entry, now.boot);
        self.write_log(writes);
    }

    fn write_log(&self, writes: Vec<decision_log::LogWrite>) {
        for w in writes {
            let model = w.model_id.as_str();
            let written = self
                .store
                .put_explain_entry(model, w.seq, &ExplainEntry::Decision(w.entry))
                .and_then(|()| match w.prune_below {
                    Some(below) => self.store.prune_explain(model, below).map(drop),
                    None => Ok(()),
                });
            if let Err(error) = written {
                // As above: the failing store has said so already.
                tracing::debug!(model_id = model, seq = w.seq, error = %error, "cannot write the model's decision log");
            }
        }
    }

    /// Wakes up when the next running entry of a decision log is due to be written.
    fn schedule_log_write(&mut self, ctx: &mut Context<Self>) {
        if self.log_wake {
            return;
        }
        let Some(due) = self.log.next_due() else {
            return;
        };
        self.log_wake = true;
        let wait = (due - crate::clock::boot()).max(0.0);
        ctx.run_later(Duration::from_secs_f64(wait), |act, ctx| {
            act.log_wake = false;
            let writes = act.log.take_due(crate::clock::boot(), false);
            act.write_log(writes);
            act.schedule_log_write(ctx);
        });
    }

    /// A decision the rules held: logged at the level it deserves; an operator's trigger gets
    /// an error.
    fn held(&self, d: &Decision, hold: rules::Hold) -> Result<Option<u64>, CommandError> {
        let model: &str = &d.model_id;
        match hold {
            rules::Hold::Paused => {
                // A policy's decisions come with every batch while it fires (the model's log
                // says when it starts and stops); an operator's trigger is worth a line.
                if d.manual {
                    tracing::info!(model_id = model, action = %d.action, policy = %d.policy, "model paused: decision recorded, no hook run");
                    return Err(CommandError::Paused(model.into()));
                }
                tracing::debug!(model_id = model, action = %d.action, policy = %d.policy, "model paused: decision recorded, no hook run");
            }
            rules::Hold::Cooldown { until } => {
                tracing::debug!(
                    model_id = model,
                    left_s = until - crate::clock::boot(),
                    "decision held by cooldown"
                );
            }
            rules::Hold::LoopGuard(why) => {
                tracing::info!(model_id = model, policy = %d.policy, why = %why, "loop guard: decision recorded, no hook run");
            }
            rules::Hold::NoHook(action) => {
                tracing::debug!(model_id = model, action = %action, policy = %d.policy, "decision recorded; no hook configured for it");
                if d.manual {
                    return Err(CommandError::NoHook(action));
                }
            }
            rules::Hold::Budget { budget } => {
                tracing::warn!(
                    model_id = model,
                    budget,
                    "daily job budget used up (escalated already today): decision recorded, no hook run"
                );
            }
        }
        Ok(None)
    }

    /// A new job for decision `d`, asking for `action` (which differs from the decision's
    /// when it was escalated, for `cause`).
    fn new_job(
        &self,
        d: &Decision,
        action: Action,
        reason: &str,
        cause: Option<&str>,
        now: Now,
    ) -> Result<Job, StoreError> {
        let job_id = self.store.next_job_id()?;
        let escalated = action != d.action || cause.is_some();
        let input = input::HookInput {
            action,
            at: d.at,
            escalation: escalated.then(|| input::Escalation {
                cause: cause.unwrap_or("loop_guard").into(),
                decided_action: d.action,
                decided_reason: d.reason.clone(),
            }),
            event: d.event.clone(),
            job_id,
            manual: d.manual,
            model_id: d.model_id.to_string(),
            policy: d.policy.clone(),
            probation: None,
            promote_of: None,
            reason: reason.into(),
            receipt: None,
            retry_of: None,
            rollback_of: None,
        };
        Ok(Job::new(
            job_id,
            &d.model_id,
            action,
            &d.policy,
            reason,
            input.to_json(),
            now.wall,
        ))
    }

    /// An escalate job for decision `d`: the escalate hook runs with the same interface as a
    /// retrain hook, or, with none configured, the escalation is recorded as skipped.
    fn escalate(
        &mut self,
        d: &Decision,
        cause: &str,
        why: String,
        now: Now,
        ctx: &mut Context<Self>,
    ) -> Result<Option<u64>, CommandError> {
        let mut job = self.new_job(d, Action::Escalate, &why, Some(cause), now)?;
        let Some(spec) = self.hooks().escalate.clone() else {
            job.note = "no escalate hook configured: recorded only".into();
            job.transition(JobState::Skipped, now.wall);
            self.save_runner(&d.model_id, now);
            self.journal(&job)?;
            self.count(&job);
            tracing::warn!(model_id = %d.model_id, job_id = job.job_id, why = %why, "escalation recorded; no escalate hook configured");
            return Ok(Some(job.job_id));
        };
        self.submit(job, spec.command, now, ctx)
    }

    /// Journals a new job and queues it, or, in a dry run, records what would have run.
    fn submit(
        &mut self,
        mut job: Job,
        command: Vec<String>,
        now: Now,
        ctx: &mut Context<Self>,
    ) -> Result<Option<u64>, CommandError> {
        let model = job.model_id.clone();
        let job_id = job.job_id;
        job.command = command;
        if self.hooks().dry_run {
            job.note = format!("dry run: would run {}", shell_words(&job.command));
            job.transition(JobState::Skipped, now.wall);
            // As if it had run: the cooldown shows what a real run would have held.
            self.sched.dry_run_recorded(&job, now);
            self.save_runner(&model, now);
            self.journal(&job)?;
            self.count(&job);
            tracing::info!(model_id = %model, job_id, action = %job.action, command = %job.note, "dry run");
            // As if it had run, again: a retrain's probation is judged (its verdict's rollback
            // is then recorded as skipped in turn).
            if job.action.is_retrain() {
                self.begin_probation(&job, true, now);
            }
            return Ok(Some(job_id));
        }
        // The runner state (budget, escalation) becomes durable with the job. A job that
        // starts at once is made durable by the journal write of its start (one fsync before
        // the spawn, not two: nothing is awaited in between, so a crash before it loses no
        // more than a crash before the decision arrived); one that has to wait, right after.
        self.save_runner(&model, now);
        self.store.save_job(&job)?;
        tracing::info!(model_id = %model, job_id, action = %job.action, policy = %job.policy, "job queued");
        self.sched.enqueue(job, 0.0);
        self.pump(ctx);
        if self.sched.is_queued(job_id)
            && let Err(e) = self.store.flush_sync()
        {
            self.sched.dequeue(job_id);
            return Err(e.into());
        }
        Ok(Some(job_id))
    }

    /// Counts a job that reached its end state, by action and outcome.
    fn count(&mut self, job: &Job) {
        *self
            .outcomes
            .entry((job.action.as_str(), job.state.as_str()))
            .or_default() += 1;
    }
}

/// An error with its sources, for a decision log entry's note.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A command line as a person would type it (for logs and dry runs).
pub fn shell_words(cmd: &[String]) -> String {
    cmd.iter()
        .map(|w| {
            if !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@".contains(&b))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_quotes_what_needs_it() {
        let c = vec![
            "/bin/run".to_string(),
            "a b".into(),
            "it's".into(),
            "--x=1".into(),
        ];
        assert_eq!(shell_words(&c), r"/bin/run 'a b' 'it'\''s' --x=1");
    }
}
