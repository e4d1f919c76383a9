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
//! At start, [`CommandActor::reconcile`] finds jobs a crash left `running`: they are marked
//! `interrupted`, their process group is killed if it outlived the daemon (the model's next
//! job waits until the group is gone, so two runs never overlap), and a new job redoes the
//! work, or none, by `hooks.on_interrupted`.

pub mod hook;
pub mod messages;
pub mod rules;
pub mod stats;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;

use crate::config::{HooksConfig, OnInterrupted};
use crate::model::registry::Registry;
use crate::policy::Action;
use crate::store::{Job, JobState, RunnerRecord, Store, StoreError};

pub use hook::{HookEnd, HookOutcome};
pub use messages::*;

/// A job cut off by this many daemon restarts in a row is not redone again.
const MAX_INTERRUPTIONS: u32 = 3;

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
}

pub struct CommandActor {
    hooks: Arc<HooksConfig>,
    store: Store,
    registry: Registry,
    /// Jobs whose hook is running, by model.
    running: HashMap<Arc<str>, Job>,
    /// Jobs waiting for a slot, or for their retry backoff (`not_before`).
    queue: VecDeque<(Job, f64)>,
    runners: HashMap<String, RunnerRecord>,
    /// Jobs that reached an end state since start, by `(action, outcome)`.
    outcomes: HashMap<(&'static str, &'static str), u64>,
    /// How long finished hook runs took, for `metrics`.
    hook_durations: stats::DurationHistogram,
    /// Hook process groups from before a restart that outlived the daemon: the model's next
    /// job waits until its group is gone.
    lingering: Vec<Lingering>,
    /// When the queue is already due to be looked at again (so wake-ups do not pile up).
    wake_at: Option<f64>,
    /// Per model, when operator triggers started jobs in the last hour
    /// (`hooks.max_triggers_per_hour`).
    triggers: HashMap<Arc<str>, VecDeque<f64>>,
}

struct Lingering {
    model_id: String,
    pgid: i32,
    since: Instant,
    /// SIGKILL sent (SIGTERM went first, at `since`).
    killed: bool,
}

impl CommandActor {
    pub fn new(hooks: Arc<HooksConfig>, store: Store, registry: Registry) -> CommandActor {
        CommandActor {
            hooks,
            store,
            registry,
            running: HashMap::new(),
            queue: VecDeque::new(),
            runners: HashMap::new(),
            outcomes: HashMap::new(),
            hook_durations: stats::DurationHistogram::default(),
            lingering: Vec::new(),
            wake_at: None,
            triggers: HashMap::new(),
        }
    }

    fn runner(&mut self, model_id: &str) -> &mut RunnerRecord {
        if !self.runners.contains_key(model_id) {
            let rec = match self.store.load_runner(model_id) {
                Ok(r) => r.unwrap_or_default(),
                Err(error) => {
                    tracing::error!(model_id, error = %error, "cannot load runner state; using defaults");
                    RunnerRecord::default()
                }
            };
            self.runners.insert(model_id.to_owned(), rec);
        }
        self.runners.get_mut(model_id).expect("inserted above")
    }

    /// Writes the model's runner state; it becomes durable with the next journal write.
    fn save_runner(&mut self, model_id: &str) {
        let rec = self.runner(model_id).clone();
        if let Err(error) = self.store.save_runner(model_id, &rec) {
            tracing::error!(model_id, error = %error, "cannot persist runner state");
        }
    }

    /// Writes a job and makes it durable (with every write before it) before anything acts
    /// on it.
    fn journal(&self, job: &Job) -> Result<(), StoreError> {
        self.store.save_job(job)?;
        self.store.flush_sync()
    }

    fn journal_logged(&self, job: &Job) {
        if let Err(error) = self.journal(job) {
            tracing::error!(job_id = job.job_id, model_id = %job.model_id, error = %error, "cannot record job transition");
        }
    }

    /// Accepts a decision: returns the job it created, if any.
    fn decide(
        &mut self,
        d: Decision,
        ctx: &mut Context<Self>,
    ) -> Result<Option<u64>, CommandError> {
        let now = now();
        let model_id = d.model_id.clone();
        let model: &str = &model_id;
        // One job per model: a queued fine-tune gives way to a full retrain; anything else
        // is absorbed by the job already there.
        if let Some(pos) = self.queue.iter().position(|(j, _)| j.model_id == model) {
            let queued = &self.queue[pos].0;
            if queued.action == Action::FineTune && d.action == Action::Full && queued.attempts == 0
            {
                let (mut old, _) = self.queue.remove(pos).expect("position is valid");
                old.note = "superseded by a full retrain".into();
                old.transition(JobState::Superseded, now);
                self.journal_logged(&old);
                self.count(&old);
                tracing::info!(
                    model_id = model,
                    job_id = old.job_id,
                    "queued fine-tune superseded by a full retrain"
                );
            } else {
                // The queued job does as much or more; an operator's trigger gets its id.
                tracing::debug!(model_id = model, "decision absorbed by the queued job");
                return Ok(d.manual.then_some(queued.job_id));
            }
        } else if self.running.contains_key(model) && !d.manual {
            // The running job answers this drift too; an operator's trigger instead queues
            // behind it.
            tracing::debug!(model_id = model, "decision absorbed by the running job");
            return Ok(None);
        }
        let hooks = self.hooks.clone();
        let loop_window_s = self
            .registry
            .rule_for(model)
            .map(|r| r.loop_window_s)
            .unwrap_or(0);
        let ask = rules::Ask {
            policy: &d.policy,
            action: d.action,
            reason: &d.reason,
            manual: d.manual,
        };
        let verdict = rules::decide(&hooks, loop_window_s, self.runner(model), ask, now);
        let (action, reason, spec) = match verdict {
            rules::Verdict::Hold(rules::Hold::Paused) => {
                // A policy's decisions come with every batch while it fires (the model's log
                // says when it starts and stops); an operator's trigger is worth a line.
                if d.manual {
                    tracing::info!(model_id = model, action = %d.action, policy = %d.policy, "model paused: decision recorded, no hook run");
                    return Err(CommandError::Paused(model.into()));
                }
                tracing::debug!(model_id = model, action = %d.action, policy = %d.policy, "model paused: decision recorded, no hook run");
                return Ok(None);
            }
            rules::Verdict::Hold(rules::Hold::Cooldown { until }) => {
                tracing::debug!(model_id = model, until, "decision held by cooldown");
                return Ok(None);
            }
            rules::Verdict::Hold(rules::Hold::LoopGuard(why)) => {
                tracing::info!(model_id = model, policy = %d.policy, why = %why, "loop guard: decision recorded, no hook run");
                return Ok(None);
            }
            rules::Verdict::Hold(rules::Hold::NoHook(action)) => {
                tracing::debug!(model_id = model, action = %action, policy = %d.policy, "decision recorded; no hook configured for it");
                return if d.manual {
                    Err(CommandError::NoHook(action))
                } else {
                    Ok(None)
                };
            }
            rules::Verdict::Hold(rules::Hold::Budget { budget }) => {
                tracing::warn!(
                    model_id = model,
                    budget,
                    "daily job budget used up (escalated already today): decision recorded, no hook run"
                );
                return Ok(None);
            }
            rules::Verdict::Escalate { cause, why } => {
                if cause == "budget" {
                    tracing::warn!(
                        model_id = model,
                        budget = hooks.max_jobs_per_day,
                        "daily job budget used up: calling the escalate hook"
                    );
                } else {
                    tracing::warn!(model_id = model, policy = %d.policy, why = %why, "loop guard: calling the escalate hook instead of retraining again");
                }
                return self.escalate(&d, cause, why, now, ctx);
            }
            rules::Verdict::Run { action, reason } => {
                if action != d.action {
                    tracing::warn!(model_id = model, policy = %d.policy, from = %d.action, to = %action, why = %reason, "loop guard: escalating the retrain");
                }
                let Some(spec) = hooks.hook(action) else {
                    // rules::decide checked it; a hook cannot vanish in between.
                    return Ok(None);
                };
                (action, reason, spec)
            }
        };
        let limit = hooks.max_triggers_per_hour;
        if d.manual && limit > 0 {
            let recent = self.triggers.entry(d.model_id.clone()).or_default();
            while recent.front().is_some_and(|&t| now - t >= 3600.0) {
                recent.pop_front();
            }
            if recent.len() >= limit as usize {
                let retry_in_s = (3600.0 - (now - recent[0])).ceil().max(1.0) as u64;
                tracing::warn!(
                    model_id = model,
                    limit,
                    retry_in_s,
                    "trigger refused: hooks.max_triggers_per_hour reached"
                );
                return Err(CommandError::TriggerLimit {
                    model: model.into(),
                    limit,
                    retry_in_s,
                });
            }
        }
        let job = self.new_job(&d, action, &reason, None, now)?;
        let submitted = self.submit(job, spec.command.clone(), ctx)?;
        if d.manual && limit > 0 {
            self.triggers
                .entry(d.model_id.clone())
                .or_default()
                .push_back(now);
        }
        Ok(submitted)
    }

    /// A new job for decision `d`, asking for `action` (which differs from the decision's
    /// when it was escalated, for `cause`).
    fn new_job(
        &self,
        d: &Decision,
        action: Action,
        reason: &str,
        cause: Option<&str>,
        now: f64,
    ) -> Result<Job, StoreError> {
        let job_id = self.store.next_job_id()?;
        let mut decision = serde_json::json!({
            "job_id": job_id,
            "model_id": &*d.model_id,
            "action": action.as_str(),
            "policy": d.policy,
            "reason": reason,
            "at": d.at,
            "manual": d.manual,
            "event": d.event,
        });
        if action != d.action || cause.is_some() {
            decision["escalation"] = serde_json::json!({
                "cause": cause.unwrap_or("loop_guard"),
                "decided_action": d.action.as_str(),
                "decided_reason": d.reason,
            });
        }
        Ok(Job::new(
            job_id,
            &d.model_id,
            action,
            &d.policy,
            reason,
            decision.to_string(),
            now,
        ))
    }

    /// An escalate job for decision `d`: the escalate hook runs with the same interface as a
    /// retrain hook, or, with none configured, the escalation is recorded as skipped.
    fn escalate(
        &mut self,
        d: &Decision,
        cause: &str,
        why: String,
        now: f64,
        ctx: &mut Context<Self>,
    ) -> Result<Option<u64>, CommandError> {
        let mut job = self.new_job(d, Action::Escalate, &why, Some(cause), now)?;
        let Some(spec) = self.hooks.escalate.clone() else {
            job.note = "no escalate hook configured: recorded only".into();
            job.transition(JobState::Skipped, now);
            self.save_runner(&d.model_id);
            self.journal(&job)?;
            self.count(&job);
            tracing::warn!(model_id = %d.model_id, job_id = job.job_id, why = %why, "escalation recorded; no escalate hook configured");
            return Ok(Some(job.job_id));
        };
        self.submit(job, spec.command, ctx)
    }

    /// Journals a new job and queues it, or, in a dry run, records what would have run.
    fn submit(
        &mut self,
        mut job: Job,
        command: Vec<String>,
        ctx: &mut Context<Self>,
    ) -> Result<Option<u64>, CommandError> {
        let now = job.created;
        let model = job.model_id.clone();
        let job_id = job.job_id;
        job.command = command;
        if self.hooks.dry_run {
            job.note = format!("dry run: would run {}", shell_words(&job.command));
            job.transition(JobState::Skipped, now);
            if job.action != Action::Escalate {
                // As if it had run: the cooldown shows what a real run would have held.
                let cooldown = self.hooks.cooldown_s as f64;
                self.runner(&model).cooldown_until = now + cooldown;
            }
            self.save_runner(&model);
            self.journal(&job)?;
            self.count(&job);
            tracing::info!(model_id = %model, job_id, action = %job.action, command = %job.note, "dry run");
            return Ok(Some(job_id));
        }
        // The runner state (budget, escalation) becomes durable with the job. A job that
        // starts at once is made durable by the journal write of its start (one fsync before
        // the spawn, not two: nothing is awaited in between, so a crash before it loses no
        // more than a crash before the decision arrived); one that has to wait, right after.
        self.save_runner(&model);
        self.store.save_job(&job)?;
        tracing::info!(model_id = %model, job_id, action = %job.action, policy = %job.policy, "job queued");
        self.queue.push_back((job, 0.0));
        self.pump(ctx);
        if self.queue.iter().any(|(j, _)| j.job_id == job_id)
            && let Err(e) = self.store.flush_sync()
        {
            self.queue.retain(|(j, _)| j.job_id != job_id);
            return Err(e.into());
        }
        Ok(Some(job_id))
    }

    /// Starts queued jobs while there are free slots.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let now = now();
        // A hook group that outlived a restart holds its model until it is gone: SIGTERM was
        // sent when it was found, SIGKILL follows after the grace.
        self.lingering.retain_mut(|l| {
            if !hook::group_running(l.pgid) {
                tracing::info!(model_id = %l.model_id, pgid = l.pgid, "the hook group from before the restart is gone");
                return false;
            }
            if !l.killed && l.since.elapsed() >= hook::KILL_GRACE {
                tracing::warn!(model_id = %l.model_id, pgid = l.pgid, "the hook group from before the restart ignored SIGTERM; killing it");
                hook::kill_group(l.pgid, libc::SIGKILL);
                l.killed = true;
            }
            true
        });
        while self.running.len() < self.hooks.max_concurrent.max(1) {
            let Some(pos) = self.queue.iter().position(|(j, nb)| {
                *nb <= now
                    && !self.running.contains_key(j.model_id.as_str())
                    && !self.lingering.iter().any(|l| l.model_id == j.model_id)
            }) else {
                break;
            };
            let (job, _) = self.queue.remove(pos).expect("position is valid");
            self.start(job, ctx);
        }
        // Wake up for the earliest backoff still pending, or to look at lingering groups.
        let backoff = self
            .queue
            .iter()
            .map(|(_, nb)| *nb)
            .filter(|nb| *nb > now)
            .reduce(f64::min);
        let linger = (!self.lingering.is_empty()).then(|| now + LINGER_POLL.as_secs_f64());
        let next = match (backoff, linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(next) = next
            && self.wake_at.is_none_or(|w| w > next || w < now)
        {
            self.wake_at = Some(next);
            ctx.run_later(
                Duration::from_secs_f64((next - now).max(0.01)),
                |act, ctx| {
                    act.wake_at = None;
                    act.pump(ctx);
                },
            );
        }
    }

    fn start(&mut self, mut job: Job, ctx: &mut Context<Self>) {
        let now = now();
        let Some(spec) = self.hooks.hook(job.action).cloned() else {
            job.note = format!(
                "the {} hook was removed from the config",
                job.action.as_str()
            );
            job.transition(JobState::Failed, now);
            self.journal_logged(&job);
            self.count(&job);
            return;
        };
        job.attempts += 1;
        job.command = spec.command.clone();
        job.started = Some(now);
        job.pgid = None;
        job.leader = None;
        // The intent to spawn is durable before the spawn: a crash from here on leaves a
        // `running` job, which a restart treats as possibly alive (it looks for the hook by
        // its job id when the group was not recorded yet), never as not yet run.
        job.transition(JobState::Running, now);
        if let Err(error) = self.journal(&job) {
            tracing::error!(job_id = job.job_id, model_id = %job.model_id, error = %error, "cannot record the job as running; not starting its hook");
            job.note = "cannot record the job as running in the state store".into();
            job.transition(JobState::Failed, now);
            self.count(&job);
            // Best effort: the store is failing.
            let _ = self.store.save_job(&job);
            return;
        }
        let mut env = hook::environment(&self.hooks);
        for (name, value) in [
            ("VISUTILITY_MODEL_ID", job.model_id.clone()),
            ("VISUTILITY_ACTION", job.action.as_str().into()),
            ("VISUTILITY_POLICY", job.policy.clone()),
            ("VISUTILITY_REASON", job.reason.clone()),
            ("VISUTILITY_JOB_ID", job.job_id.to_string()),
            ("VISUTILITY_ATTEMPT", job.attempts.to_string()),
            // Which daemon's job this is: a restart looks for its lost hooks by job id and
            // this, never another daemon's (job ids start at 1 in every store).
            ("VISUTILITY_STORE", self.store.path().display().to_string()),
        ] {
            env.insert(name.into(), value.into());
        }
        let run = hook::HookRun {
            command: spec.command.clone(),
            env,
            check_modes: !self.hooks.allow_insecure_modes,
            stdin: {
                let mut s = job.decision.clone().into_bytes();
                s.push(b'\n');
                s
            },
            timeout: Duration::from_secs(spec.timeout_s),
            model_id: job.model_id.clone(),
            job_id: job.job_id,
        };
        let job_id = job.job_id;
        let addr = ctx.address();
        match hook::spawn(run) {
            Ok((pgid, fut)) => {
                job.pgid = Some(pgid);
                job.leader = hook::leader_identity(pgid);
                // Durable with the next flush; until then a restart finds the group by job id.
                if let Err(error) = self.store.save_job(&job) {
                    tracing::error!(job_id, model_id = %job.model_id, error = %error, "cannot record the hook's process group");
                }
                tracing::info!(model_id = %job.model_id, job_id, action = %job.action, attempt = job.attempts, pgid, command = %shell_words(&job.command), "hook started");
                self.running.insert(job.model_id.as_str().into(), job);
                actix::spawn(async move {
                    let outcome = fut.await;
                    addr.do_send(HookFinished { job_id, outcome });
                });
            }
            Err(e) => {
                let why = format!("cannot execute {}: {e}", spec.command[0]);
                self.running.insert(job.model_id.as_str().into(), job);
                addr.do_send(HookFinished {
                    job_id,
                    outcome: HookOutcome::spawn_failed(why),
                });
            }
        }
    }

    fn finish(&mut self, msg: HookFinished, ctx: &mut Context<Self>) {
        let now = now();
        let Some(key) = self
            .running
            .iter()
            .find(|(_, j)| j.job_id == msg.job_id)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        let mut job = self.running.remove(&key).expect("found above");
        let o = msg.outcome;
        self.hook_durations.record(&o);
        job.stdout_tail = o.stdout_tail.clone();
        job.stderr_tail = o.stderr_tail.clone();
        job.pgid = None;
        job.leader = None;
        let (exit_code, signal, note) = match &o.end {
            HookEnd::Exited(c) => (
                Some(*c),
                None,
                if *c == 0 {
                    String::new()
                } else {
                    format!("exited with code {c}")
                },
            ),
            HookEnd::Signaled(s) => (None, Some(*s), format!("killed by signal {s}")),
            HookEnd::TimedOut => (
                None,
                Some(libc::SIGKILL),
                "timed out; its process group was killed".into(),
            ),
            HookEnd::SpawnFailed(e) => (None, None, e.clone()),
        };
        job.exit_code = exit_code;
        job.signal = signal;
        job.note = note;
        let model = job.model_id.clone();
        let retrain = job.action != Action::Escalate;
        if o.success() {
            job.transition(JobState::Succeeded, now);
            self.count(&job);
            tracing::info!(model_id = %model, job_id = job.job_id, action = %job.action, duration_ms = o.duration.as_millis() as u64, "hook succeeded");
            if retrain {
                // The reset is queued to the model before the success is visible, so events
                // sent after an operator sees it meet fresh policies.
                if let Some(addr) = self.registry.get(&model)
                    && self
                        .registry
                        .rule_for(&model)
                        .is_some_and(|r| r.reset_on_retrain)
                {
                    addr.do_send(crate::model::ResetPolicies { warmup: true });
                }
            }
            let hooks = self.hooks.clone();
            rules::job_ended(
                &hooks,
                self.runner(&model),
                job.action,
                &job.policy,
                true,
                now,
            );
            // The runner state is durable together with the job's end.
            self.save_runner(&model);
            self.journal_logged(&job);
        } else if job.attempts <= self.hooks.retries && !matches!(o.end, HookEnd::SpawnFailed(_)) {
            let backoff = backoff(self.hooks.retry_backoff_s, job.attempts, job.job_id);
            tracing::warn!(model_id = %model, job_id = job.job_id, attempt = job.attempts, note = %job.note, retry_in_s = backoff, "hook failed; will retry");
            job.note = format!("{}; retry in {backoff:.1} s", job.note);
            job.transition(JobState::Queued, now);
            self.journal_logged(&job);
            self.queue.push_back((job, now + backoff));
        } else {
            tracing::error!(model_id = %model, job_id = job.job_id, attempts = job.attempts, note = %job.note, "hook failed");
            job.transition(JobState::Failed, now);
            self.count(&job);
            let hooks = self.hooks.clone();
            rules::job_ended(
                &hooks,
                self.runner(&model),
                job.action,
                &job.policy,
                false,
                now,
            );
            self.save_runner(&model);
            self.journal_logged(&job);
        }
        if let Err(error) = self.store.prune_jobs(JOURNAL_KEEP) {
            tracing::warn!(error = %error, "cannot prune the job journal");
        }
        self.pump(ctx);
    }

    /// Counts a job that reached its end state, by action and outcome.
    fn count(&mut self, job: &Job) {
        *self
            .outcomes
            .entry((job.action.as_str(), job.state.as_str()))
            .or_default() += 1;
    }

    /// How many interrupted jobs this one redoes, following `retry_of` back (bounded).
    fn interruptions_before(&self, job: &Job) -> u32 {
        let mut n = 0;
        let mut cur = job.retry_of;
        while let Some(id) = cur
            && n < MAX_INTERRUPTIONS
        {
            n += 1;
            cur = self
                .store
                .load_job(id)
                .ok()
                .flatten()
                .and_then(|j| j.retry_of);
        }
        n
    }

    /// Marks a job whose hook was cut off `interrupted` and, by `hooks.on_interrupted`,
    /// returns a new queued job that redoes it (both journaled). The interrupted job keeps
    /// its state in the history, so an operator sees what happened.
    fn interrupt(&mut self, mut job: Job, why: &str, now: f64) -> Option<Job> {
        job.pgid = None;
        job.leader = None;
        let chain = self.interruptions_before(&job);
        let retry = match self.hooks.on_interrupted {
            OnInterrupted::Drop => None,
            // A daemon that dies during every run of this hook must not redo it forever.
            OnInterrupted::Retry if chain + 1 >= MAX_INTERRUPTIONS => None,
            OnInterrupted::Retry => match self.store.next_job_id() {
                Ok(id) => Some(id),
                Err(error) => {
                    tracing::error!(model_id = %job.model_id, job_id = job.job_id, error = %error, "cannot create the job that retries an interrupted one");
                    None
                }
            },
        };
        let redo = retry.map(|id| {
            let mut decision: serde_json::Value =
                serde_json::from_str(&job.decision).unwrap_or_else(|_| serde_json::json!({}));
            decision["job_id"] = id.into();
            decision["retry_of"] = job.job_id.into();
            let mut redo = Job::new(
                id,
                &job.model_id,
                job.action,
                &job.policy,
                &job.reason,
                decision.to_string(),
                now,
            );
            redo.retry_of = Some(job.job_id);
            redo.command = job.command.clone();
            redo
        });
        job.note = match &redo {
            Some(r) => format!("{why}; retried as job {}", r.job_id),
            None if self.hooks.on_interrupted == OnInterrupted::Retry => format!(
                "{why}; not retried: interrupted {} times in a row",
                chain + 1
            ),
            None => format!("{why}; not retried (hooks.on_interrupted)"),
        };
        job.transition(JobState::Interrupted, now);
        self.count(&job);
        if let Some(r) = &redo
            && let Err(error) = self.store.save_job(r)
        {
            tracing::error!(model_id = %r.model_id, job_id = r.job_id, error = %error, "cannot record the retry of an interrupted job");
        }
        self.journal_logged(&job);
        match &redo {
            Some(r) => {
                tracing::info!(model_id = %job.model_id, job_id = job.job_id, retry_job_id = r.job_id, "interrupted job will be retried")
            }
            None => {
                tracing::warn!(model_id = %job.model_id, job_id = job.job_id, "interrupted job dropped")
            }
        }
        redo
    }

    /// Queues a job found `queued` in the journal at start, keeping one job per model: a full
    /// retrain supersedes a queued fine-tune; anything else is absorbed by the job queued first.
    fn restore(&mut self, mut job: Job, now: f64) {
        match self
            .queue
            .iter()
            .position(|(j, _)| j.model_id == job.model_id)
        {
            None => self.queue.push_back((job, 0.0)),
            Some(pos) => {
                let first = &self.queue[pos].0;
                if first.action == Action::FineTune
                    && job.action == Action::Full
                    && first.attempts == 0
                {
                    let (mut old, _) = self.queue.remove(pos).expect("position is valid");
                    old.note = format!("superseded by job {} (a full retrain)", job.job_id);
                    old.transition(JobState::Superseded, now);
                    self.journal_logged(&old);
                    self.count(&old);
                    self.queue.push_back((job, 0.0));
                } else {
                    job.note = format!("absorbed by job {} after a restart", first.job_id);
                    job.transition(JobState::Superseded, now);
                    self.journal_logged(&job);
                    self.count(&job);
                }
            }
        }
    }

    /// After an unclean stop: jobs left `running` are interrupted (their process group told
    /// to stop if it outlived the daemon), then redone or dropped; jobs left `queued` are
    /// queued again.
    pub fn reconcile(&mut self, ctx: &mut Context<Self>) {
        let jobs = match self.store.jobs(None, JOURNAL_KEEP) {
            Ok(j) => j,
            Err(error) => {
                tracing::error!(error = %error, "cannot read the job journal to reconcile it");
                return;
            }
        };
        let now = now();
        for job in jobs.into_iter().rev() {
            match job.state {
                JobState::Running => {
                    let groups = match job.pgid {
                        Some(pgid) if hook::group_is_ours(pgid, job.leader.as_ref()) => {
                            vec![pgid]
                        }
                        Some(_) => Vec::new(),
                        // Crashed between the spawn and recording its group: find the hook by
                        // the job id in its environment.
                        None => hook::groups_with_env(&[
                            ("VISUTILITY_JOB_ID", &job.job_id.to_string()),
                            ("VISUTILITY_STORE", &self.store.path().display().to_string()),
                        ]),
                    };
                    for pgid in groups {
                        tracing::warn!(model_id = %job.model_id, job_id = job.job_id, pgid, "a hook from before the restart is still running; stopping its process group");
                        hook::kill_group(pgid, libc::SIGTERM);
                        self.lingering.push(Lingering {
                            model_id: job.model_id.clone(),
                            pgid,
                            since: Instant::now(),
                            killed: false,
                        });
                    }
                    if let Some(redo) = self.interrupt(job, "interrupted by a daemon restart", now)
                    {
                        self.restore(redo, now);
                    }
                }
                JobState::Queued => self.restore(job, now),
                _ => {}
            }
        }
        self.pump(ctx);
    }
}

/// Exponential backoff with deterministic jitter (no RNG needed: the job id spreads jobs).
fn backoff(base: f64, attempt: u32, job_id: u64) -> f64 {
    let exp = base * 2f64.powi(attempt.saturating_sub(1).min(16) as i32);
    let jitter =
        ((job_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64 / (1u64 << 24) as f64) * 0.25;
    exp * (1.0 + jitter)
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

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Actor for CommandActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.reconcile(ctx);
    }
}

impl Handler<Decision> for CommandActor {
    type Result = ();

    fn handle(&mut self, msg: Decision, ctx: &mut Context<Self>) {
        if let Err(error) = self.decide(msg, ctx) {
            tracing::error!(error = %error, "cannot act on a decision");
        }
    }
}

impl Handler<Trigger> for CommandActor {
    type Result = Result<u64, CommandError>;

    fn handle(&mut self, msg: Trigger, ctx: &mut Context<Self>) -> Self::Result {
        let action = msg.0.action;
        self.decide(msg.0, ctx)?.ok_or(CommandError::NoHook(action))
    }
}

impl Handler<HookFinished> for CommandActor {
    type Result = ();

    fn handle(&mut self, msg: HookFinished, ctx: &mut Context<Self>) {
        self.finish(msg, ctx);
    }
}

impl Handler<SetPaused> for CommandActor {
    type Result = Result<(), CommandError>;

    fn handle(&mut self, msg: SetPaused, _ctx: &mut Context<Self>) -> Self::Result {
        self.runner(&msg.model_id).paused = msg.paused;
        let rec = self.runner(&msg.model_id).clone();
        self.store.save_runner(&msg.model_id, &rec)?;
        self.store.flush_sync()?;
        tracing::info!(model_id = %msg.model_id, paused = msg.paused, "pause state changed");
        Ok(())
    }
}

impl Handler<ForgetRunner> for CommandActor {
    type Result = Result<(), CommandError>;

    fn handle(&mut self, msg: ForgetRunner, _ctx: &mut Context<Self>) -> Self::Result {
        let model = msg.model_id.as_str();
        if let Some(job) = self.running.get(model) {
            return Err(CommandError::JobActive {
                model: model.into(),
                job_id: job.job_id,
                state: "running",
            });
        }
        if let Some((job, _)) = self.queue.iter().find(|(j, _)| j.model_id == model) {
            return Err(CommandError::JobActive {
                model: model.into(),
                job_id: job.job_id,
                state: "queued",
            });
        }
        self.runners.remove(model);
        self.triggers.remove(model);
        Ok(())
    }
}

impl Handler<GetStatus> for CommandActor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _msg: GetStatus, _ctx: &mut Context<Self>) -> Self::Result {
        // Paused models may not be cached yet: the store is the truth.
        let mut paused: Vec<String> = self
            .store
            .runners()
            .filter_map(Result::ok)
            .filter(|(_, r)| r.paused)
            .map(|(k, _)| k)
            .collect();
        paused.sort();
        MessageResult(RunnerStatus {
            running: self.running.len(),
            queued: self.queue.len(),
            paused,
            jobs_by_outcome: self
                .outcomes
                .iter()
                .fold(HashMap::new(), |mut m, ((_, o), n)| {
                    *m.entry(*o).or_default() += n;
                    m
                }),
            jobs_by_action: {
                let mut v: Vec<_> = self.outcomes.iter().map(|(k, n)| (*k, *n)).collect();
                v.sort();
                v
            },
            hook_durations: self.hook_durations.clone(),
        })
    }
}

impl Handler<Reconfigure> for CommandActor {
    type Result = ();

    fn handle(&mut self, msg: Reconfigure, ctx: &mut Context<Self>) {
        self.hooks = msg.0;
        self.pump(ctx);
    }
}

impl Handler<Shutdown> for CommandActor {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, _ctx: &mut Context<Self>) {
        let now = now();
        let jobs: Vec<Job> = self.running.drain().map(|(_, j)| j).collect();
        // Every group gets SIGTERM at once and one grace period is shared, so a stop takes
        // the grace once however many hooks run.
        let groups: Vec<i32> = jobs.iter().filter_map(|j| j.pgid).collect();
        for job in &jobs {
            if let Some(pgid) = job.pgid {
                tracing::warn!(model_id = %job.model_id, job_id = job.job_id, pgid, "stopping a running hook for shutdown");
                hook::kill_group(pgid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + hook::KILL_GRACE;
        while groups.iter().any(|&g| hook::group_running(g)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for &pgid in &groups {
            hook::kill_group(pgid, libc::SIGKILL);
        }
        for job in jobs {
            // The retry, if any, is journaled `queued`: the next start runs it.
            self.interrupt(job, "interrupted by daemon shutdown", now);
        }
    }
}

impl Handler<Ping> for CommandActor {
    type Result = ();

    fn handle(&mut self, _msg: Ping, _ctx: &mut Context<Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_jitters_boundedly() {
        let a = backoff(10.0, 1, 7);
        let b = backoff(10.0, 2, 7);
        assert!((10.0..=12.5).contains(&a), "{a}");
        assert!((20.0..=25.0).contains(&b), "{b}");
    }

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
