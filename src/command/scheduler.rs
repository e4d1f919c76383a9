//! The hook runner's bookkeeping as a plain struct: which job runs or waits for each model,
//! what a new decision becomes ([`Scheduler::plan`]), which queued job starts next, when a
//! failed hook is retried, and each model's [`Runner`] state.
//!
//! The rules of a single decision (pause, cooldown, loop guard, budget) are the functions of
//! [`super::rules`]; this adds what needs the jobs around it:
//! - one job per model: a running or queued job absorbs new decisions, except that a full
//!   retrain supersedes a queued fine-tune that has not run yet, and an operator's `trigger`
//!   queues one job behind a running one;
//! - `max_triggers_per_hour` operator triggers per model in a sliding hour;
//! - at most `max_concurrent` jobs run; queued jobs wait for a slot and for their retry
//!   backoff;
//! - a failed hook is retried `retries` times, with exponential backoff and a deterministic
//!   jitter.
//!
//! Architecture invariant: no I/O and no clock here (time is the `now` argument, boot clock
//! for every duration, see [`crate::clock`]); the [`super::CommandActor`] journals, spawns
//! and persists what this decides.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::clock::Now;
use crate::config::HooksConfig;
use crate::policy::Action;
use crate::store::{Job, JobState, RunnerRecord};

use super::rules::{self, Ask, Hold, Runner, Verdict};

/// The sliding window of `max_triggers_per_hour`, in seconds.
const TRIGGER_WINDOW_S: f64 = 3_600.0;

/// What becomes of a decision.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// The job queued or running for the model (this one) answers it too; an operator's
    /// trigger gets the queued job's id.
    Absorbed(u64),
    /// The rules held it: recorded, nothing runs.
    Held(Hold),
    /// An operator's trigger over `max_triggers_per_hour`.
    TriggerLimit { limit: u32, retry_in_s: u64 },
    /// A new job: run the hook for `action` (or the escalate hook, `cause` given); the queued
    /// fine-tune it supersedes, already marked `superseded`, is for the caller to journal.
    Job {
        action: Action,
        reason: String,
        cause: Option<&'static str>,
        superseded: Option<Box<Job>>,
    },
}

/// A job waiting in the queue.
#[derive(Debug, Clone)]
struct Waiting {
    job: Job,
    /// Not started before this boot clock instant (a retry's backoff).
    not_before: f64,
}

/// What a finished job leaves to do.
#[derive(Debug, PartialEq)]
pub enum AfterEnd {
    /// Queued again, to be retried after this many seconds.
    Retry { backoff_s: f64 },
    /// Done (succeeded, or failed for good): the cooldown and the loop guard are updated.
    Ended,
}

/// Jobs and runner states of every model; see the module doc.
pub struct Scheduler {
    hooks: Arc<HooksConfig>,
    running: HashMap<Arc<str>, Job>,
    queue: VecDeque<Waiting>,
    runners: HashMap<String, Runner>,
    /// Per model, when operator triggers started jobs in the last hour (boot clock).
    triggers: HashMap<Arc<str>, VecDeque<f64>>,
}

impl Scheduler {
    pub fn new(hooks: Arc<HooksConfig>) -> Scheduler {
        Scheduler {
            hooks,
            running: HashMap::new(),
            queue: VecDeque::new(),
            runners: HashMap::new(),
            triggers: HashMap::new(),
        }
    }

    pub fn hooks(&self) -> &Arc<HooksConfig> {
        &self.hooks
    }

    /// A reloaded config.
    pub fn reconfigure(&mut self, hooks: Arc<HooksConfig>) {
        self.hooks = hooks;
    }

    /// Whether the model's runner state is in memory.
    pub fn has_runner(&self, model_id: &str) -> bool {
        self.runners.contains_key(model_id)
    }

    /// Puts a model's persisted runner record in memory (its deadlines clamped at `now`).
    pub fn load_runner(&mut self, model_id: &str, rec: &RunnerRecord, now: Now) {
        let runner = Runner::from_record(rec, &self.hooks, now);
        self.runners.insert(model_id.to_owned(), runner);
    }

    /// The model's runner state (a fresh one if it has none).
    pub fn runner(&mut self, model_id: &str) -> &mut Runner {
        self.runners.entry(model_id.to_owned()).or_default()
    }

    /// The model's runner state as it is persisted, dated at `now`.
    pub fn runner_record(&mut self, model_id: &str, now: Now) -> RunnerRecord {
        self.runner(model_id).to_record(now)
    }

    /// What becomes of a decision for `model_id` at `now`. `ask.manual` marks an operator's
    /// trigger; `loop_window_s` is the model's rule's.
    pub fn plan(&mut self, model_id: &str, ask: Ask<'_>, loop_window_s: u64, now: Now) -> Plan {
        // One job per model: a queued fine-tune may give way to a full retrain; anything else
        // is absorbed by the job already there.
        let mut supersede = None;
        if let Some(pos) = self.queued_pos(model_id) {
            let queued = &self.queue[pos].job;
            if supersedes(queued, ask.action) {
                supersede = Some(pos);
            } else {
                return Plan::Absorbed(queued.job_id);
            }
        } else if let Some(job) = self.running.get(model_id)
            && !ask.manual
        {
            // The running job answers this drift too; an operator's trigger instead queues
            // behind it.
            return Plan::Absorbed(job.job_id);
        }
        let hooks = self.hooks.clone();
        let verdict = rules::decide(&hooks, loop_window_s, self.runner(model_id), ask, now);
        let (action, reason, cause) = match verdict {
            Verdict::Hold(hold) => return Plan::Held(hold),
            Verdict::Escalate { cause, why } => (Action::Escalate, why, Some(cause)),
            Verdict::Run { action, reason } => (action, reason, None),
        };
        let limit = hooks.max_triggers_per_hour;
        if ask.manual && limit > 0 {
            let recent = self.triggers.entry(model_id.into()).or_default();
            while recent
                .front()
                .is_some_and(|&t| now.boot - t >= TRIGGER_WINDOW_S)
            {
                recent.pop_front();
            }
            if recent.len() >= limit as usize {
                let retry_in_s = (TRIGGER_WINDOW_S - (now.boot - recent[0])).ceil().max(1.0) as u64;
                return Plan::TriggerLimit { limit, retry_in_s };
            }
        }
        let superseded = supersede.and_then(|pos| self.queue.remove(pos)).map(|w| {
            let mut old = w.job;
            old.note = "superseded by a full retrain".into();
            old.transition(JobState::Superseded, now.wall);
            Box::new(old)
        });
        Plan::Job {
            action,
            reason,
            cause,
            superseded,
        }
    }

    /// An operator's trigger started a job at `now` (counted against the hourly limit).
    pub fn note_trigger(&mut self, model_id: &str, now: Now) {
        if self.hooks.max_triggers_per_hour > 0 {
            self.triggers
                .entry(model_id.into())
                .or_default()
                .push_back(now.boot);
        }
    }

    /// Queues a job, to start once a slot is free and `not_before` (boot clock) has passed.
    pub fn enqueue(&mut self, job: Job, not_before: f64) {
        self.queue.push_back(Waiting { job, not_before });
    }

    /// Removes a queued job (its journal write failed).
    pub fn dequeue(&mut self, job_id: u64) -> Option<Job> {
        let pos = self.queue.iter().position(|w| w.job.job_id == job_id)?;
        self.queue.remove(pos).map(|w| w.job)
    }

    pub fn is_queued(&self, job_id: u64) -> bool {
        self.queue.iter().any(|w| w.job.job_id == job_id)
    }

    /// Queues a job found `queued` in the journal at start, keeping one job per model: a full
    /// retrain supersedes a queued fine-tune; anything else is absorbed by the job queued
    /// first. Returns the job that gave way, marked `superseded`, for the caller to journal.
    pub fn restore(&mut self, mut job: Job, now: Now) -> Option<Job> {
        let Some(pos) = self.queued_pos(&job.model_id) else {
            self.enqueue(job, 0.0);
            return None;
        };
        let first = &self.queue[pos].job;
        if supersedes(first, job.action) {
            let mut old = self.queue.remove(pos).expect("position is valid").job;
            old.note = format!("superseded by job {} (a full retrain)", job.job_id);
            old.transition(JobState::Superseded, now.wall);
            self.enqueue(job, 0.0);
            Some(old)
        } else {
            job.note = format!("absorbed by job {} after a restart", first.job_id);
            job.transition(JobState::Superseded, now.wall);
            Some(job)
        }
    }

    /// The next queued job that may start at `now`, if a slot is free: its backoff passed,
    /// its model runs nothing and is not `held` (a hook group from before a restart).
    pub fn next_to_start(&mut self, now: Now, held: impl Fn(&str) -> bool) -> Option<Job> {
        if self.running.len() >= self.hooks.max_concurrent.max(1) {
            return None;
        }
        let pos = self.queue.iter().position(|w| {
            w.not_before <= now.boot
                && !self.running.contains_key(w.job.model_id.as_str())
                && !held(&w.job.model_id)
        })?;
        self.queue.remove(pos).map(|w| w.job)
    }

    /// The earliest retry backoff still pending after `now` (boot clock).
    pub fn next_backoff(&self, now: Now) -> Option<f64> {
        self.queue
            .iter()
            .map(|w| w.not_before)
            .filter(|nb| *nb > now.boot)
            .reduce(f64::min)
    }

    /// The job now runs its hook.
    pub fn started(&mut self, job: Job) {
        self.running.insert(job.model_id.as_str().into(), job);
    }

    /// The running job with this id, taken out (its hook ended).
    pub fn take_running(&mut self, job_id: u64) -> Option<Job> {
        let key = self
            .running
            .iter()
            .find(|(_, j)| j.job_id == job_id)
            .map(|(k, _)| k.clone())?;
        self.running.remove(&key)
    }

    /// Every running job, taken out (shutdown).
    pub fn drain_running(&mut self) -> Vec<Job> {
        self.running.drain().map(|(_, j)| j).collect()
    }

    /// A job's hook ended at `now`: `succeeded`, or failed with `retriable` (a hook that
    /// could not even start is not retried). A failure with retries left is queued again
    /// behind its backoff (the caller journals it); otherwise the model's cooldown starts
    /// (for a retrain) and, on success, the loop guard remembers it.
    pub fn job_ended(&mut self, job: &Job, succeeded: bool, retriable: bool, now: Now) -> AfterEnd {
        if !succeeded && retriable && job.attempts <= self.hooks.retries {
            return AfterEnd::Retry {
                backoff_s: backoff(self.hooks.retry_backoff_s, job.attempts, job.job_id),
            };
        }
        let hooks = self.hooks.clone();
        rules::job_ended(
            &hooks,
            self.runner(&job.model_id),
            job.action,
            &job.policy,
            succeeded,
            now,
        );
        AfterEnd::Ended
    }

    /// In a dry run a job is recorded, not run: the cooldown starts as if it had run.
    pub fn dry_run_recorded(&mut self, job: &Job, now: Now) {
        if job.action != Action::Escalate {
            let cooldown = self.hooks.cooldown_s as f64;
            self.runner(&job.model_id).cooldown_until = now.boot + cooldown;
        }
    }

    /// `forget`: refused with the model's job and its state while it has one running or
    /// queued; otherwise its runner state and trigger count are dropped.
    pub fn forget(&mut self, model_id: &str) -> Result<(), (u64, &'static str)> {
        if let Some(job) = self.running.get(model_id) {
            return Err((job.job_id, "running"));
        }
        if let Some(pos) = self.queued_pos(model_id) {
            return Err((self.queue[pos].job.job_id, "queued"));
        }
        self.runners.remove(model_id);
        self.triggers.remove(model_id);
        Ok(())
    }

    /// The model's job running or queued, if any, with its state.
    pub fn active_job(&self, model_id: &str) -> Option<(u64, &'static str)> {
        if let Some(job) = self.running.get(model_id) {
            return Some((job.job_id, "running"));
        }
        self.queued_pos(model_id)
            .map(|pos| (self.queue[pos].job.job_id, "queued"))
    }

    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    pub fn queued_count(&self) -> usize {
        self.queue.len()
    }

    fn queued_pos(&self, model_id: &str) -> Option<usize> {
        self.queue.iter().position(|w| w.job.model_id == model_id)
    }
}

/// Whether a new decision for `action` replaces the queued job: a full retrain replaces a
/// fine-tune that has not started yet.
fn supersedes(queued: &Job, action: Action) -> bool {
    queued.action == Action::FineTune && action == Action::Full && queued.attempts == 0
}

/// Exponential backoff with deterministic jitter (no RNG needed: the job id spreads jobs):
/// `base × 2^(attempt-1) × (1 + j)` with `j` in `[0, 0.25)`.
pub fn backoff(base: f64, attempt: u32, job_id: u64) -> f64 {
    let exp = base * 2f64.powi(attempt.saturating_sub(1).min(16) as i32);
    let jitter =
        ((job_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64 / (1u64 << 24) as f64) * 0.25;
    exp * (1.0 + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HookSpec, OnInterrupted};

    fn hooks() -> HooksConfig {
        let spec = Some(HookSpec {
            command: vec!["/bin/true".into()],
            timeout_s: 60,
        });
        HooksConfig {
            max_concurrent: 1,
            cooldown_s: 6,
            retries: 2,
            retry_backoff_s: 1.0,
            dry_run: false,
            on_interrupted: OnInterrupted::Drop,
            max_jobs_per_day: 0,
            max_triggers_per_hour: 0,
            full: spec.clone(),
            fine_tune: spec.clone(),
            escalate: spec,
            rollback: None,
            promote: None,
            env: Vec::new(),
            pass_env: Vec::new(),
            allow_insecure_modes: true,
        }
    }

    fn ask(action: Action, manual: bool) -> Ask<'static> {
        Ask {
            policy: "p",
            action,
            reason: "why",
            manual,
        }
    }

    fn t(s: f64) -> Now {
        Now::same(1_700_000_000.0 + s)
    }

    /// Plans a decision and, when it makes a job, queues it (as the actor does).
    fn submit(
        s: &mut Scheduler,
        id: &mut u64,
        model: &str,
        action: Action,
        manual: bool,
        now: Now,
    ) -> Plan {
        let plan = s.plan(model, ask(action, manual), 0, now);
        if let Plan::Job { action, .. } = &plan {
            *id += 1;
            s.enqueue(
                Job::new(*id, model, *action, "p", "why", String::new(), now.wall),
                0.0,
            );
            if manual {
                s.note_trigger(model, now);
            }
        }
        plan
    }

    #[test]
    fn one_job_per_model_absorbs_decisions_and_a_full_retrain_supersedes_a_queued_fine_tune() {
        let mut s = Scheduler::new(Arc::new(hooks()));
        let mut id = 0;
        // Model b's job takes the only slot; a's fine-tune waits.
        assert!(matches!(
            submit(&mut s, &mut id, "b", Action::Full, false, t(0.0)),
            Plan::Job { .. }
        ));
        let b = s.next_to_start(t(0.0), |_| false).expect("b starts");
        s.started(b);
        assert!(matches!(
            submit(&mut s, &mut id, "a", Action::FineTune, false, t(0.0)),
            Plan::Job { .. }
        ));
        assert_eq!(s.next_to_start(t(0.0), |_| false), None, "no free slot");
        // Another fine-tune, or a trigger, is absorbed by the queued job.
        assert_eq!(
            submit(&mut s, &mut id, "a", Action::FineTune, false, t(1.0)),
            Plan::Absorbed(2)
        );
        assert_eq!(
            submit(&mut s, &mut id, "a", Action::FineTune, true, t(1.0)),
            Plan::Absorbed(2)
        );
        // A full retrain supersedes it.
        let Plan::Job {
            action: Action::Full,
            superseded: Some(old),
            ..
        } = submit(&mut s, &mut id, "a", Action::Full, false, t(2.0))
        else {
            panic!("expected a full retrain superseding job 2")
        };
        assert_eq!((old.job_id, old.state), (2, JobState::Superseded));
        assert_eq!(s.queued_count(), 1);
        // A running job absorbs a policy's decision; a trigger queues behind it.
        assert_eq!(
            submit(&mut s, &mut id, "b", Action::Full, false, t(3.0)),
            Plan::Absorbed(1)
        );
        assert!(matches!(
            submit(&mut s, &mut id, "b", Action::Full, true, t(3.0)),
            Plan::Job { .. }
        ));
    }

    #[test]
    fn a_held_decision_leaves_the_queued_fine_tune_in_place() {
        let mut h = hooks();
        h.max_concurrent = 1;
        let mut s = Scheduler::new(Arc::new(h));
        let mut id = 0;
        // A trigger queues a fine-tune behind b; the model is then paused.
        submit(&mut s, &mut id, "b", Action::Full, false, t(0.0));
        let b = s.next_to_start(t(0.0), |_| false).unwrap();
        s.started(b);
        submit(&mut s, &mut id, "a", Action::FineTune, true, t(0.0));
        s.runner("a").paused = true;
        assert_eq!(
            submit(&mut s, &mut id, "a", Action::Full, false, t(1.0)),
            Plan::Held(Hold::Paused)
        );
        assert!(s.is_queued(2), "the queued fine-tune stays");
    }

    #[test]
    fn triggers_are_limited_per_model_in_a_sliding_hour() {
        let mut h = hooks();
        h.max_triggers_per_hour = 2;
        h.max_concurrent = 10;
        let mut s = Scheduler::new(Arc::new(h));
        let mut id = 0;
        for at in [0.0, 10.0] {
            assert!(matches!(
                submit(&mut s, &mut id, "a", Action::Full, true, t(at)),
                Plan::Job { .. }
            ));
            let j = s.next_to_start(t(at), |_| false).unwrap();
            s.take_running(j.job_id);
        }
        assert_eq!(
            submit(&mut s, &mut id, "a", Action::Full, true, t(20.0)),
            Plan::TriggerLimit {
                limit: 2,
                retry_in_s: 3_580
            }
        );
        // Another model has its own hour; the first trigger leaves the window after an hour.
        assert!(matches!(
            submit(&mut s, &mut id, "b", Action::Full, true, t(20.0)),
            Plan::Job { .. }
        ));
        assert!(matches!(
            submit(&mut s, &mut id, "a", Action::Full, true, t(3_600.0)),
            Plan::Job { .. }
        ));
    }

    #[test]
    fn a_failed_hook_is_retried_with_growing_jittered_backoff_then_ends_with_a_cooldown() {
        let mut s = Scheduler::new(Arc::new(hooks()));
        s.enqueue(
            Job::new(9, "a", Action::Full, "p", "why", String::new(), 0.0),
            0.0,
        );
        let mut now = t(0.0);
        let mut waits = Vec::new();
        loop {
            let mut job = s.next_to_start(now, |_| false).expect("due");
            job.attempts += 1;
            s.started(job);
            let job = s.take_running(9).expect("running");
            match s.job_ended(&job, false, true, now) {
                AfterEnd::Retry { backoff_s } => {
                    waits.push(backoff_s);
                    s.enqueue(job, now.boot + backoff_s);
                    // Not due before its backoff.
                    assert_eq!(s.next_to_start(now, |_| false), None);
                    assert_eq!(s.next_backoff(now), Some(now.boot + backoff_s));
                    now = Now::same(now.boot + backoff_s);
                }
                AfterEnd::Ended => break,
            }
        }
        assert_eq!(waits.len(), 2, "retries = 2");
        assert!((1.0..1.25).contains(&waits[0]), "{waits:?}");
        assert!((2.0..2.5).contains(&waits[1]), "{waits:?}");
        // The failure started the cooldown (6 s).
        assert_eq!(s.runner("a").cooldown_until, now.boot + 6.0);
        // A hook that could not start is not retried.
        let j = Job {
            attempts: 1,
            ..Job::new(10, "c", Action::Full, "p", "", String::new(), 0.0)
        };
        assert_eq!(s.job_ended(&j, false, false, now), AfterEnd::Ended);
    }

    #[test]
    fn backoff_grows_and_jitters_boundedly() {
        for id in 0..1_000u64 {
            for attempt in 1..6u32 {
                let b = backoff(10.0, attempt, id);
                let base = 10.0 * 2f64.powi(attempt as i32 - 1);
                assert!(b >= base && b < base * 1.25, "{attempt} {id} {b}");
            }
        }
        assert_eq!(backoff(10.0, 1, 7), backoff(10.0, 1, 7), "deterministic");
    }

    #[test]
    fn restore_keeps_one_job_per_model() {
        let mut s = Scheduler::new(Arc::new(hooks()));
        let ft = Job::new(1, "a", Action::FineTune, "p", "", String::new(), 0.0);
        let full = Job::new(2, "a", Action::Full, "p", "", String::new(), 0.0);
        let again = Job::new(3, "a", Action::FineTune, "p", "", String::new(), 0.0);
        assert_eq!(s.restore(ft, t(0.0)), None);
        let old = s.restore(full, t(0.0)).expect("the fine-tune gives way");
        assert_eq!((old.job_id, old.state), (1, JobState::Superseded));
        let absorbed = s.restore(again, t(0.0)).expect("absorbed");
        assert_eq!(absorbed.job_id, 3);
        assert!(
            absorbed.note.contains("absorbed by job 2"),
            "{}",
            absorbed.note
        );
        assert_eq!(s.queued_count(), 1);
    }

    #[test]
    fn forget_is_refused_while_a_job_is_running_or_queued() {
        let mut s = Scheduler::new(Arc::new(hooks()));
        s.enqueue(
            Job::new(1, "a", Action::Full, "p", "", String::new(), 0.0),
            0.0,
        );
        assert_eq!(s.forget("a"), Err((1, "queued")));
        let j = s.next_to_start(t(0.0), |_| false).unwrap();
        s.started(j);
        assert_eq!(s.forget("a"), Err((1, "running")));
        s.take_running(1);
        s.runner("a").paused = true;
        assert_eq!(s.forget("a"), Ok(()));
        assert!(!s.has_runner("a"));
    }
}
