//! Running hooks: the queue's pump (free slots, retry backoff, hook groups that outlived a
//! restart), starting a job's hook with its environment and stdin, and what its end leaves
//! (success, a retry behind its backoff, or failure), journaled at every step.

use std::time::Duration;

use actix::prelude::*;

use crate::clock::Now;
use crate::policy::Action;
use crate::store::{Job, JobState};

use super::rollback::receipt_file;
use super::scheduler::AfterEnd;
use super::{
    CommandActor, HookEnd, HookFinished, HookOutcome, JOURNAL_KEEP, LINGER_POLL, hook, shell_words,
};

impl CommandActor {
    /// Starts queued jobs while there are free slots.
    pub(super) fn pump(&mut self, ctx: &mut Context<Self>) {
        let now = Now::read();
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
        loop {
            let lingering = &self.lingering;
            let Some(job) = self
                .sched
                .next_to_start(now, |m| lingering.iter().any(|l| l.model_id == m))
            else {
                break;
            };
            self.start(job, ctx);
        }
        // Wake up for the earliest backoff still pending, or to look at lingering groups.
        let backoff = self.sched.next_backoff(now);
        let linger = (!self.lingering.is_empty()).then(|| now.boot + LINGER_POLL.as_secs_f64());
        let next = match (backoff, linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(next) = next
            && self.wake_at.is_none_or(|w| w > next || w < now.boot)
        {
            self.wake_at = Some(next);
            ctx.run_later(
                Duration::from_secs_f64((next - now.boot).max(0.01)),
                |act, ctx| {
                    act.wake_at = None;
                    act.pump(ctx);
                },
            );
        }
    }

    fn start(&mut self, mut job: Job, ctx: &mut Context<Self>) {
        let now = Now::read();
        let Some(spec) = self.hooks().hook(job.action).cloned() else {
            job.note = format!(
                "the {} hook was removed from the config",
                job.action.as_str()
            );
            job.transition(JobState::Failed, now.wall);
            self.journal_logged(&job);
            self.count(&job);
            return;
        };
        job.attempts += 1;
        job.command = spec.command.clone();
        job.started = Some(now.wall);
        job.pgid = None;
        job.leader = None;
        // The intent to spawn is durable before the spawn: a crash from here on leaves a
        // `running` job, which a restart treats as possibly alive (it looks for the hook by
        // its job id when the group was not recorded yet), never as not yet run.
        job.transition(JobState::Running, now.wall);
        if let Err(error) = self.journal(&job) {
            tracing::error!(job_id = job.job_id, model_id = %job.model_id, error = %error, "cannot record the job as running; not starting its hook");
            job.note = "cannot record the job as running in the state store".into();
            job.transition(JobState::Failed, now.wall);
            self.count(&job);
            // Best effort: the store is failing.
            let _ = self.store.save_job(&job);
            return;
        }
        let hooks = self.hooks();
        let mut env = hook::environment(&hooks);
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
        if job.action.is_retrain()
            && let Some(path) = self.receipt_path(job.job_id)
        {
            env.insert("VISUTILITY_RECEIPT".into(), path.into_os_string());
        }
        let run = hook::HookRun {
            command: spec.command.clone(),
            env,
            check_modes: !hooks.allow_insecure_modes,
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
                self.sched.started(job);
                actix::spawn(async move {
                    let outcome = fut.await;
                    addr.do_send(HookFinished { job_id, outcome });
                });
            }
            Err(e) => {
                let why = format!("cannot execute {}: {e}", spec.command[0]);
                self.sched.started(job);
                addr.do_send(HookFinished {
                    job_id,
                    outcome: HookOutcome::spawn_failed(why),
                });
            }
        }
    }

    pub(super) fn finish(&mut self, msg: HookFinished, ctx: &mut Context<Self>) {
        let now = Now::read();
        let Some(mut job) = self.sched.take_running(msg.job_id) else {
            return;
        };
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
        let succeeded = o.success();
        self.ensure_runner(&model, now);
        let retriable = !matches!(o.end, HookEnd::SpawnFailed(_));
        let job_id = job.job_id;
        let after = self.sched.job_ended(&job, succeeded, retriable, now);
        let job_done_rollback = job.action == Action::Rollback && matches!(after, AfterEnd::Ended);
        let retrain = job.action.is_retrain();
        match after {
            AfterEnd::Retry { backoff_s } => {
                tracing::warn!(model_id = %model, job_id = job.job_id, attempt = job.attempts, note = %job.note, retry_in_s = backoff_s, "hook failed; will retry");
                job.note = format!("{}; retry in {backoff_s:.1} s", job.note);
                job.transition(JobState::Queued, now.wall);
                self.journal_logged(&job);
                self.sched.enqueue(job, now.boot + backoff_s);
            }
            AfterEnd::Ended if succeeded => {
                if job.action.is_retrain() {
                    self.keep_receipt(&mut job);
                }
                job.transition(JobState::Succeeded, now.wall);
                self.count(&job);
                tracing::info!(model_id = %model, job_id = job.job_id, action = %job.action, duration_ms = o.duration.as_millis() as u64, "hook succeeded");
                // The reset is queued to the model before the success is visible, so events
                // sent after an operator sees it meet fresh policies.
                if job.action.is_retrain() {
                    self.begin_probation(&job, false, now);
                } else if job.action == Action::Rollback {
                    (self.on_retrained)(super::ModelNotice::RolledBack { model_id: &model });
                }
                // The runner state is durable together with the job's end.
                self.save_runner(&model, now);
                self.journal_logged(&job);
            }
            AfterEnd::Ended => {
                tracing::error!(model_id = %model, job_id = job.job_id, attempts = job.attempts, note = %job.note, "hook failed");
                job.transition(JobState::Failed, now.wall);
                self.count(&job);
                self.save_runner(&model, now);
                self.journal_logged(&job);
            }
        }
        if retrain {
            // Kept or ignored by now; a retry writes it afresh.
            let _ = std::fs::remove_file(self.receipts_dir().join(receipt_file(job_id)));
        }
        // A rollback, done or failed for good, is for a person to hear of: once.
        if job_done_rollback {
            self.rollback_ended(job_id, succeeded, now, ctx);
        }
        if let Err(error) = self.store.prune_jobs(JOURNAL_KEEP) {
            tracing::warn!(error = %error, "cannot prune the job journal");
        }
        self.pump(ctx);
    }
}
