//! The command actor: turns decisions into jobs and runs the operator's hooks.
//!
//! Rules it keeps, whatever the policies say:
//! - one model never has two jobs running at once: a running or queued job absorbs new
//!   decisions, except that a full retrain supersedes a queued fine-tune, and an operator's
//!   `trigger` queues one job behind a running one;
//! - at most `max_concurrent` hooks run at the same time; the rest wait in a queue;
//! - after a job for a model ends, `cooldown_s` passes before the next (persisted, so a restart
//!   does not reset it);
//! - a failing hook is retried `retries` times with exponential backoff and jitter;
//! - every job is written to the store *before* its hook starts, and every transition after.
//!
//! At start, [`CommandActor::reconcile`] finds jobs a crash left `running`: their process group
//! is killed if still alive (never two runs at once), they are marked `interrupted`, and retried
//! or dropped by `hooks.on_interrupted`.

pub mod hook;
pub mod messages;
pub mod stats;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use crate::config::{HooksConfig, OnInterrupted};
use crate::model::registry::Registry;
use crate::policy::Action;
use crate::store::{Job, JobState, RunnerRecord, Store, StoreError};

pub use hook::{HookEnd, HookOutcome};
pub use messages::*;

/// How many jobs the journal keeps.
const JOURNAL_KEEP: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot record the job")]
    Store(#[from] StoreError),
    #[error("no hook is configured for action {0}")]
    NoHook(Action),
    #[error("model {0} is paused")]
    Paused(String),
    #[error("model {0} already has a job")]
    Busy(String),
}

/// What `status` shows of the runner.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunnerStatus {
    pub running: usize,
    pub queued: usize,
    pub paused: Vec<String>,
    pub jobs_by_outcome: HashMap<&'static str, u64>,
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
    outcomes: HashMap<&'static str, u64>,
    /// How long finished hook runs took, for `metrics`.
    hook_durations: stats::DurationHistogram,
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

    fn save_runner(&mut self, model_id: &str) {
        let rec = self.runner(model_id).clone();
        if let Err(error) = self.store.save_runner(model_id, &rec) {
            tracing::error!(model_id, error = %error, "cannot persist runner state");
        }
    }

    /// Writes a job and makes it durable before anything acts on it.
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
        let model: &str = &d.model_id;
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
                self.count(JobState::Superseded);
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
            // The running retrain answers this drift too; an operator's trigger instead
            // queues behind it.
            tracing::debug!(model_id = model, "decision absorbed by the running job");
            return Ok(None);
        }
        let hooks = self.hooks.clone();
        let runner = self.runner(model);
        if runner.paused {
            tracing::info!(model_id = model, action = %d.action, "model paused: decision recorded, no hook run");
            return if d.manual {
                Err(CommandError::Paused(model.into()))
            } else {
                Ok(None)
            };
        }
        if !d.manual && now < runner.cooldown_until {
            tracing::debug!(
                model_id = model,
                until = runner.cooldown_until,
                "decision held by cooldown"
            );
            return Ok(None);
        }
        let Some(spec) = hooks.hook(d.action) else {
            tracing::info!(model_id = model, action = %d.action, policy = %d.policy, "decision recorded; no hook configured for it");
            return if d.manual {
                Err(CommandError::NoHook(d.action))
            } else {
                Ok(None)
            };
        };
        if !d.manual && hooks.max_jobs_per_day > 0 {
            let day = (now / 86_400.0) as u64;
            if runner.budget_day != day {
                runner.budget_day = day;
                runner.budget_used = 0;
            }
            if runner.budget_used >= hooks.max_jobs_per_day {
                tracing::warn!(
                    model_id = model,
                    budget = hooks.max_jobs_per_day,
                    "daily job budget used up: decision recorded, no hook run"
                );
                return Ok(None);
            }
            runner.budget_used += 1;
        }
        let job_id = self.store.next_job_id()?;
        let decision = serde_json::json!({
            "job_id": job_id,
            "model_id": model,
            "action": d.action.as_str(),
            "policy": d.policy,
            "reason": d.reason,
            "at": d.at,
            "manual": d.manual,
            "event": d.event,
        });
        let mut job = Job::new(
            job_id,
            model,
            d.action,
            &d.policy,
            &d.reason,
            decision.to_string(),
            now,
        );
        job.command = spec.command.clone();
        if hooks.dry_run {
            job.note = format!("dry run: would run {}", shell_words(&spec.command));
            job.transition(JobState::Skipped, now);
            self.journal(&job)?;
            self.count(JobState::Skipped);
            let cooldown = hooks.cooldown_s as f64;
            self.runner(model).cooldown_until = now + cooldown;
            self.save_runner(model);
            tracing::info!(model_id = model, job_id, command = %job.note, "dry run");
            return Ok(Some(job_id));
        }
        self.journal(&job)?;
        self.save_runner(model);
        tracing::info!(model_id = model, job_id, action = %d.action, policy = %d.policy, "job queued");
        self.queue.push_back((job, 0.0));
        self.pump(ctx);
        Ok(Some(job_id))
    }

    /// Starts queued jobs while there are free slots.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let now = now();
        while self.running.len() < self.hooks.max_concurrent.max(1) {
            let Some(pos) = self
                .queue
                .iter()
                .position(|(j, nb)| *nb <= now && !self.running.contains_key(j.model_id.as_str()))
            else {
                break;
            };
            let (job, _) = self.queue.remove(pos).expect("position is valid");
            self.start(job, ctx);
        }
        // Wake up for the earliest backoff still pending.
        if let Some(next) = self
            .queue
            .iter()
            .map(|(_, nb)| *nb)
            .filter(|nb| *nb > now)
            .reduce(f64::min)
        {
            ctx.run_later(
                Duration::from_secs_f64((next - now).max(0.01)),
                |act, ctx| act.pump(ctx),
            );
        }
    }

    fn start(&mut self, mut job: Job, ctx: &mut Context<Self>) {
        let now = now();
        let Some(spec) = self.hooks.hook(job.action).cloned() else {
            job.note = "the hook for this action was removed from the config".into();
            job.transition(JobState::Failed, now);
            self.journal_logged(&job);
            self.count(JobState::Failed);
            return;
        };
        job.attempts += 1;
        job.command = spec.command.clone();
        let run = hook::HookRun {
            command: spec.command.clone(),
            env: vec![
                ("VISUTILITY_MODEL_ID", job.model_id.clone()),
                ("VISUTILITY_ACTION", job.action.as_str().into()),
                ("VISUTILITY_POLICY", job.policy.clone()),
                ("VISUTILITY_REASON", job.reason.clone()),
                ("VISUTILITY_JOB_ID", job.job_id.to_string()),
                ("VISUTILITY_ATTEMPT", job.attempts.to_string()),
            ],
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
                job.started = Some(now);
                job.transition(JobState::Running, now);
                self.journal_logged(&job);
                tracing::info!(model_id = %job.model_id, job_id, attempt = job.attempts, pgid, command = %shell_words(&job.command), "hook started");
                self.running.insert(job.model_id.as_str().into(), job);
                actix::spawn(async move {
                    let outcome = fut.await;
                    addr.do_send(HookFinished { job_id, outcome });
                });
            }
            Err(e) => {
                let why = format!("cannot execute {}: {e}", spec.command[0]);
                job.started = Some(now);
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
        if o.success() {
            job.transition(JobState::Succeeded, now);
            self.count(JobState::Succeeded);
            tracing::info!(model_id = %model, job_id = job.job_id, duration_ms = o.duration.as_millis() as u64, "hook succeeded");
            self.after_end(&model, now);
            let action = job.action;
            let policy = job.policy.clone();
            self.runner(&model).last_success = Some((now, policy, action));
            self.save_runner(&model);
            self.journal_logged(&job);
            if let Some(addr) = self.registry.get(&model) {
                let reset = self
                    .registry
                    .rule_for(&model)
                    .is_some_and(|r| r.reset_on_retrain);
                if reset {
                    addr.do_send(crate::model::ResetPolicies { warmup: true });
                }
            }
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
            self.count(JobState::Failed);
            self.journal_logged(&job);
            self.after_end(&model, now);
            self.save_runner(&model);
        }
        if let Err(error) = self.store.prune_jobs(JOURNAL_KEEP) {
            tracing::warn!(error = %error, "cannot prune the job journal");
        }
        self.pump(ctx);
    }

    fn after_end(&mut self, model: &str, now: f64) {
        let cooldown = self.hooks.cooldown_s as f64;
        self.runner(model).cooldown_until = now + cooldown;
    }

    fn count(&mut self, state: JobState) {
        *self.outcomes.entry(state.as_str()).or_default() += 1;
    }

    /// After an unclean stop: jobs left `running` are interrupted (their process group killed
    /// if it survived), then retried or dropped; jobs left `queued` are queued again.
    pub fn reconcile(&mut self, ctx: &mut Context<Self>) {
        let jobs = match self.store.jobs(None, JOURNAL_KEEP) {
            Ok(j) => j,
            Err(error) => {
                tracing::error!(error = %error, "cannot read the job journal to reconcile it");
                return;
            }
        };
        let now = now();
        for mut job in jobs.into_iter().rev() {
            match job.state {
                JobState::Running => {
                    if let Some(pgid) = job.pgid.take()
                        && hook::group_alive(pgid)
                    {
                        tracing::warn!(model_id = %job.model_id, job_id = job.job_id, pgid, "a hook from before the restart is still running; killing its process group");
                        hook::kill_group(pgid, libc::SIGTERM);
                        for _ in 0..40 {
                            if !hook::group_alive(pgid) {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        hook::kill_group(pgid, libc::SIGKILL);
                    }
                    job.note = "interrupted by a daemon restart".into();
                    job.transition(JobState::Interrupted, now);
                    self.count(JobState::Interrupted);
                    self.journal_logged(&job);
                    if self.hooks.on_interrupted == OnInterrupted::Retry {
                        tracing::info!(model_id = %job.model_id, job_id = job.job_id, "retrying the interrupted job");
                        job.transition(JobState::Queued, now);
                        self.journal_logged(&job);
                        self.queue.push_back((job, 0.0));
                    }
                }
                JobState::Queued if !self.queue.iter().any(|(j, _)| j.model_id == job.model_id) => {
                    self.queue.push_back((job, 0.0));
                }
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
            jobs_by_outcome: self.outcomes.clone(),
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
        for mut job in jobs {
            if let Some(pgid) = job.pgid {
                tracing::warn!(model_id = %job.model_id, job_id = job.job_id, pgid, "stopping a running hook for shutdown");
                hook::kill_group(pgid, libc::SIGTERM);
                for _ in 0..40 {
                    if !hook::group_alive(pgid) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                hook::kill_group(pgid, libc::SIGKILL);
            }
            job.pgid = None;
            job.note = "interrupted by daemon shutdown".into();
            job.transition(JobState::Interrupted, now);
            self.journal_logged(&job);
            if self.hooks.on_interrupted == OnInterrupted::Retry {
                // Queued again so the next start runs it (reconcile picks queued jobs up).
                job.transition(JobState::Queued, now);
                self.journal_logged(&job);
            }
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
