//! Undoing a retrain: receipts and rollbacks.
//!
//! A retrain hook (`full`, `fine_tune`) may write a receipt, one JSON object of at most
//! [`RECEIPT_MAX`] bytes (for example `{"version": "v42", "previous": "v41"}`), to the file
//! named by `VISUTILITY_RECEIPT`; after the hook succeeded it is stored with the job (the
//! store's `receipts` tree) and shown by `history --json`.
//!
//! `visutility rollback MODEL` rolls back the model's latest succeeded retrain that has a
//! receipt: a job with action `rollback` runs the `[hooks] rollback` hook with the usual stdin
//! plus `rollback_of` (the retrain's job id), `receipt` and `probation` (`cause`: `manual`).
//! A rollback is exempt from cooldown and budget; its success resets the model's policies
//! (with warm-up) as a retrain's does and starts a cooldown; and once it ended, done or failed
//! for good, the escalate hook is called once with `escalation.cause = "rollback"`, so a
//! person hears of it. Without a rollback hook the rollback is recorded (`skipped`) and
//! escalated, and nothing runs.

use std::io::Read;
use std::path::PathBuf;

use actix::prelude::*;

use crate::clock::Now;
use crate::policy::Action;
use crate::store::{Job, JobState, ProbationState};

use super::input::ProbationInput;
use super::{CommandActor, CommandError, Decision, JOURNAL_KEEP};

/// The largest receipt kept, in bytes.
pub const RECEIPT_MAX: u64 = 64 * 1024;

/// A job's receipt file's name in the receipts directory.
pub(super) fn receipt_file(job_id: u64) -> String {
    format!("job-{job_id}.json")
}

impl CommandActor {
    /// Where a retrain hook of job `job_id` may write its receipt: a directory beside the
    /// store, created private (0700) when first needed.
    pub(super) fn receipt_path(&self, job_id: u64) -> Option<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.receipts_dir();
        if !dir.is_dir()
            && let Err(error) = std::fs::DirBuilder::new().mode(0o700).create(&dir)
            && !dir.is_dir()
        {
            tracing::warn!(dir = %dir.display(), error = %error, "cannot create the receipts directory; retrain hooks get no VISUTILITY_RECEIPT");
            return None;
        }
        Some(dir.join(receipt_file(job_id)))
    }

    /// The directory of the receipts, beside the store (it may not exist yet).
    pub(super) fn receipts_dir(&self) -> PathBuf {
        self.store.path().with_file_name("receipts")
    }

    /// After a retrain succeeded: its receipt, if the hook wrote one, is checked (one JSON
    /// object, at most [`RECEIPT_MAX`] bytes) and stored with the job; a bad one is noted on
    /// the job and dropped.
    pub(super) fn keep_receipt(&self, job: &mut Job) {
        let path = self.receipts_dir().join(receipt_file(job.job_id));
        let Ok(file) = std::fs::File::open(&path) else {
            return;
        };
        let mut text = String::new();
        let read = file.take(RECEIPT_MAX + 1).read_to_string(&mut text);
        let problem = match read {
            Err(e) => Some(format!("cannot read it: {e}")),
            Ok(n) if n as u64 > RECEIPT_MAX => Some(format!("larger than {RECEIPT_MAX} bytes")),
            Ok(_) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Object(_)) => None,
                Ok(_) => Some("not a JSON object".into()),
                Err(e) => Some(format!("not JSON: {e}")),
            },
        };
        match problem {
            None => {
                if let Err(error) = self.store.save_receipt(job.job_id, text.trim()) {
                    tracing::error!(job_id = job.job_id, error = %error, "cannot store the retrain's receipt");
                }
            }
            Some(why) => {
                tracing::warn!(job_id = job.job_id, model_id = %job.model_id, why = %why, "the retrain's receipt is ignored");
                let note = format!("receipt ignored: {why}");
                job.note = if job.note.is_empty() {
                    note
                } else {
                    format!("{}; {note}", job.note)
                };
            }
        }
    }

    /// `visutility rollback MODEL`: the job created (queued, or recorded as skipped). A
    /// retrain on probation ends its probation rolled back (cause `manual`), and the hook reads
    /// the probation's figures so far.
    pub(super) fn rollback(
        &mut self,
        model: &str,
        ctx: &mut Context<Self>,
    ) -> Result<u64, CommandError> {
        let now = Now::read();
        if let Some((job_id, state)) = self.sched.active_job(model) {
            return Err(CommandError::RollbackBusy {
                model: model.into(),
                job_id,
                state,
            });
        }
        let target = self.rollback_target(model)?;
        let mut figures = ProbationInput::manual();
        if let Ok(Some(r)) = self.store.probation(target.job_id)
            && r.state == ProbationState::OnProbation
        {
            figures.metric = Some(r.metric.clone());
            figures.tolerance = Some(r.tolerance);
            figures.baseline = r.baseline.as_ref().map(Into::into);
        }
        let id = self.rollback_retrain(model, target.job_id, figures, true, now, ctx)?;
        self.end_probation_by_rollback(model, target.job_id, id, now);
        Ok(id)
    }

    /// The model's latest succeeded retrain that has a receipt, unless a rollback succeeded
    /// after it.
    fn rollback_target(&self, model: &str) -> Result<Job, CommandError> {
        let nothing = |why: String| CommandError::NothingToRollBack {
            model: model.into(),
            why,
        };
        for job in self.store.jobs(Some(model), JOURNAL_KEEP)? {
            if job.state != JobState::Succeeded {
                continue;
            }
            if job.action == Action::Rollback {
                return Err(nothing(format!(
                    "its latest retrain was rolled back already (job {})",
                    job.job_id
                )));
            }
            if !job.action.is_retrain() {
                continue;
            }
            if self.store.receipt(job.job_id)?.is_some() {
                return Ok(job);
            }
        }
        Err(nothing(
            "no succeeded retrain of it left a receipt (VISUTILITY_RECEIPT)".into(),
        ))
    }

    /// A rollback ended (done, or failed for good, or recorded without a hook): the escalate
    /// hook hears of it once, with cause `rollback`.
    pub(super) fn rollback_ended(
        &mut self,
        job_id: u64,
        succeeded: bool,
        now: Now,
        ctx: &mut Context<Self>,
    ) {
        let Ok(Some(job)) = self.store.load_job(job_id) else {
            return;
        };
        let why = match (succeeded, job.state) {
            (true, _) => format!("model {} was rolled back (job {job_id})", job.model_id),
            (false, JobState::Skipped) => format!(
                "model {} should be rolled back (job {job_id}), but no rollback hook is configured",
                job.model_id
            ),
            (false, _) => format!(
                "rolling back model {} failed (job {job_id}): {}",
                job.model_id, job.note
            ),
        };
        let d = Decision {
            policy: job.policy.clone(),
            reason: job.reason.clone(),
            ..Decision::manual(&job.model_id, Action::Rollback)
        };
        tracing::warn!(model_id = %job.model_id, job_id, why = %why, "calling the escalate hook for a rollback");
        if let Err(error) = self.escalate(&d, "rollback", why, now, ctx) {
            tracing::error!(model_id = %job.model_id, error = %error, "cannot escalate a rollback");
        }
    }
}
