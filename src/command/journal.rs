//! The job journal's side of the [`CommandActor`]: every job is written to the store before
//! its hook starts and at every transition after; at start, [`CommandActor::reconcile`] reads
//! the jobs a crash left `running` or `queued` and settles them.
//!
//! A job left `running` is marked `interrupted`; its process group is killed if it outlived
//! the daemon (the model's next job waits until the group is gone, so two runs never
//! overlap), and a new job redoes the work, or none, by `hooks.on_interrupted`. A job that was
//! cut off by [`MAX_INTERRUPTIONS`] restarts in a row is not redone again.

use std::time::Instant;

use actix::prelude::*;

use crate::clock::Now;
use crate::config::OnInterrupted;
use crate::store::{Job, JobState, StoreError};

use super::input::HookInput;
use super::{CommandActor, JOURNAL_KEEP, Lingering, hook};

/// A job cut off by this many daemon restarts in a row is not redone again.
const MAX_INTERRUPTIONS: u32 = 3;

impl CommandActor {
    /// Writes a job and makes it durable (with every write before it) before anything acts
    /// on it.
    pub(super) fn journal(&self, job: &Job) -> Result<(), StoreError> {
        self.store.save_job(job)?;
        self.store.flush_sync()
    }

    pub(super) fn journal_logged(&self, job: &Job) {
        if let Err(error) = self.journal(job) {
            tracing::error!(job_id = job.job_id, model_id = %job.model_id, error = %error, "cannot record job transition");
        }
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
    pub(super) fn interrupt(&mut self, mut job: Job, why: &str, now: Now) -> Option<Job> {
        job.pgid = None;
        job.leader = None;
        let chain = self.interruptions_before(&job);
        let on_interrupted = self.hooks().on_interrupted;
        let retry = match on_interrupted {
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
            let decision = match serde_json::from_str::<HookInput>(&job.decision) {
                Ok(mut input) => {
                    input.job_id = id;
                    input.retry_of = Some(job.job_id);
                    input.to_json()
                }
                // A journal from before typed inputs, or damaged: the redo still runs.
                Err(_) => {
                    let mut v: serde_json::Value = serde_json::from_str(&job.decision)
                        .unwrap_or_else(|_| serde_json::json!({}));
                    v["job_id"] = id.into();
                    v["retry_of"] = job.job_id.into();
                    v.to_string()
                }
            };
            let mut redo = Job::new(
                id,
                &job.model_id,
                job.action,
                &job.policy,
                &job.reason,
                decision,
                now.wall,
            );
            redo.retry_of = Some(job.job_id);
            redo.command = job.command.clone();
            redo
        });
        job.note = match &redo {
            Some(r) => format!("{why}; retried as job {}", r.job_id),
            None if on_interrupted == OnInterrupted::Retry => format!(
                "{why}; not retried: interrupted {} times in a row",
                chain + 1
            ),
            None => format!("{why}; not retried (hooks.on_interrupted)"),
        };
        job.transition(JobState::Interrupted, now.wall);
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

    /// Queues a job found `queued` in the journal at start (one job per model, see
    /// [`super::scheduler::Scheduler::restore`]), journaling the one that gave way.
    fn restore(&mut self, job: Job, now: Now) {
        if let Some(gone) = self.sched.restore(job, now) {
            self.journal_logged(&gone);
            self.count(&gone);
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
        let now = Now::read();
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
