//! The runner's side of probation (contract section 7): each retrain's probation in the
//! store's `probation` tree, the verdicts acted on once, and `visutility promote`.
//!
//! A decision's retrain keeps the baseline the decision froze (`Pending`). When the retrain
//! succeeds, the model is told ([`ModelNotice::Retrained`]); if its rule has a probation the
//! record becomes `on_probation` and the model judges the metric as events arrive. Its verdict
//! comes back as a [`ProbationVerdict`]:
//! - `promoted`: the promote hook runs, if there is one (a job with action `promote`);
//! - `rolled_back` (`degraded`, `policy_fired`, or `inconclusive` with `on_inconclusive =
//!   "rollback"`): a rollback job, exempt from cooldown and budget, whose stdin carries the
//!   receipt and the probation's figures; once it ended the escalate hook hears of it;
//! - `inconclusive`: recorded, and with `on_inconclusive = "escalate"` escalated.
//!
//! Once: a model reports the verdict it holds every time it loads (see `model::verdicts`),
//! and a verdict is ignored when the retrain's record has one already or a job already
//! follows it. The follow-up job is journaled before the record says so: a power cut in
//! between leaves the job, which the check finds.

use actix::prelude::*;

use crate::clock::Now;
use crate::policy::Action;
use crate::probation::{Cause, Probation, Sample, State};
use crate::store::{DecisionOutcome, Job, JobState, ProbationRecord, ProbationState};

use super::input::{HookInput, ProbationInput};
use super::messages::{Decision, ProbationVerdict};
use super::{CommandActor, CommandError, ModelNotice};

/// How many of a model's latest jobs are searched for a verdict's follow-up job.
const FOLLOW_UP_SEARCH: usize = 64;

impl CommandActor {
    /// At start: the probations the journal holds resume, each model's actor is started (so
    /// its `max_wait_s` runs even if its model server never sends again), and a model that
    /// lost its probation's start to a power cut starts it now.
    pub(super) fn load_probations(&mut self) {
        let all = match self.store.probations() {
            Ok(all) => all,
            Err(error) => {
                tracing::error!(error = %error, "cannot read the probations from the store");
                return;
            }
        };
        let now = Now::read();
        for (job_id, r) in all {
            if r.state != ProbationState::OnProbation {
                continue;
            }
            let begun = (self.on_retrained)(ModelNotice::Retrained {
                model_id: &r.model_id,
                job_id,
                baseline: r.baseline,
                at: r.started_at.unwrap_or(now.wall),
                probation_only: true,
            });
            if begun.is_some() {
                if let Some(old) = self.on_probation.insert(r.model_id.clone(), job_id) {
                    self.close(
                        old.min(job_id),
                        ProbationState::Superseded,
                        None,
                        None,
                        now.wall,
                    );
                    self.on_probation
                        .insert(r.model_id.clone(), old.max(job_id));
                }
            } else {
                tracing::warn!(model_id = %r.model_id, job_id, "the model's rule has no probation any more: its retrain's probation ends inconclusive");
                self.close(job_id, ProbationState::Inconclusive, None, None, now.wall);
            }
        }
    }

    /// A decision made retrain `job`: the baseline it froze is kept with the job.
    pub(super) fn keep_baseline(&self, job: &Job, baseline: Option<Sample>) {
        let Some(baseline) = baseline else { return };
        if !job.action.is_retrain() {
            return;
        }
        let r = ProbationRecord {
            model_id: job.model_id.clone(),
            state: ProbationState::Pending,
            metric: String::new(),
            tolerance: 0.0,
            baseline: Some(baseline),
            candidate: None,
            z: None,
            z_threshold: None,
            cause: None,
            started_at: None,
            decided_at: None,
            followed_by: None,
        };
        if let Err(error) = self.store.save_probation(job.job_id, &r) {
            tracing::error!(job_id = job.job_id, error = %error, "cannot keep the decision's baseline with its retrain");
        }
    }

    /// Retrain `job` succeeded (before its success is journaled): the model hears of it, and
    /// its probation begins when its rule has one. `probation_only`: a dry run's retrain,
    /// which only a probation hears of.
    pub(super) fn begin_probation(&mut self, job: &Job, probation_only: bool, now: Now) {
        let pending = self.store.probation(job.job_id).ok().flatten();
        let baseline = pending.as_ref().and_then(|p| p.baseline);
        let Some(begun) = (self.on_retrained)(ModelNotice::Retrained {
            model_id: &job.model_id,
            job_id: job.job_id,
            baseline,
            at: now.wall,
            probation_only,
        }) else {
            return;
        };
        if let Some(old) = self.on_probation.insert(job.model_id.clone(), job.job_id)
            && old != job.job_id
        {
            self.close(old, ProbationState::Superseded, None, None, now.wall);
        }
        let r = ProbationRecord {
            model_id: job.model_id.clone(),
            state: ProbationState::OnProbation,
            metric: begun.metric,
            tolerance: begun.tolerance,
            baseline,
            candidate: None,
            z: None,
            z_threshold: None,
            cause: None,
            started_at: Some(now.wall),
            decided_at: None,
            followed_by: None,
        };
        if let Err(error) = self.store.save_probation(job.job_id, &r) {
            tracing::error!(job_id = job.job_id, error = %error, "cannot record the retrain's probation");
        }
        tracing::info!(model_id = %job.model_id, job_id = job.job_id, metric = %r.metric, "retrain on probation");
    }

    /// Ends a probation record without a verdict of the model's (superseded, or an
    /// operator's), and counts it; `followed_by` is the job that follows it, if one does.
    /// Returns the record it ended.
    fn close(
        &mut self,
        job_id: u64,
        state: ProbationState,
        cause: Option<Cause>,
        followed_by: Option<u64>,
        at: f64,
    ) -> Option<ProbationRecord> {
        let Ok(Some(mut r)) = self.store.probation(job_id) else {
            return None;
        };
        if r.state != ProbationState::OnProbation {
            return None;
        }
        r.state = state;
        r.cause = cause;
        r.decided_at = Some(at);
        r.followed_by = followed_by;
        if let Err(error) = self.store.save_probation(job_id, &r) {
            tracing::error!(job_id, error = %error, "cannot record the end of a probation");
        }
        self.count_probation(state);
        tracing::info!(model_id = %r.model_id, job_id, probation = state.as_str(), "probation ended");
        Some(r)
    }

    /// `forget`: a probation of the model ends with its state (inconclusive: nothing judged
    /// it), and no verdict will come.
    pub(super) fn probation_forgotten(&mut self, model: &str) {
        if let Some(job_id) = self.on_probation.remove(model) {
            self.close(
                job_id,
                ProbationState::Inconclusive,
                None,
                None,
                crate::clock::wall(),
            );
        }
    }

    fn count_probation(&mut self, state: ProbationState) {
        *self.probation_outcomes.entry(state.as_str()).or_default() += 1;
    }

    /// A model's verdict: acted on once.
    pub(super) fn verdict(&mut self, v: ProbationVerdict, ctx: &mut Context<Self>) {
        let now = Now::read();
        let p = &v.probation;
        let job_id = p.job_id;
        let model: &str = &v.model_id;
        let record = match self.store.probation(job_id) {
            Ok(r) => r,
            Err(error) => {
                tracing::error!(model_id = model, job_id, error = %error, "cannot read the retrain's probation; its verdict waits for the model's next load");
                return;
            }
        };
        if record.as_ref().is_some_and(|r| {
            !matches!(
                r.state,
                ProbationState::Pending | ProbationState::OnProbation
            )
        }) {
            tracing::debug!(
                model_id = model,
                job_id,
                "probation verdict acted on already"
            );
            return;
        }
        if record.is_none() {
            // Pruned from the journal with its job, or lost with a power cut: only a retrain
            // still in the journal is acted on.
            match self.store.load_job(job_id) {
                Ok(Some(j)) if j.model_id == model && j.action.is_retrain() => {}
                _ => return,
            }
        }
        // Its job in the journal and the record still open: a kill came between the two
        // writes. The job is not made again; the record is completed below (else it would
        // stay on probation for good, and resume as such at every start).
        let follow = self.follow_up(model, job_id);
        if let Some(follow) = follow {
            tracing::debug!(
                model_id = model,
                job_id,
                follow_up = follow,
                "probation verdict acted on already (its job is in the journal)"
            );
        }
        let state = ProbationState::of(p.state);
        let mut r = record.unwrap_or_else(|| ProbationRecord {
            model_id: model.to_owned(),
            state,
            metric: v.metric.clone(),
            tolerance: v.tolerance,
            baseline: None,
            candidate: None,
            z: None,
            z_threshold: None,
            cause: None,
            started_at: Some(p.started_at),
            decided_at: None,
            followed_by: None,
        });
        r.state = state;
        if !v.metric.is_empty() {
            r.metric = v.metric.clone();
            r.tolerance = v.tolerance;
        }
        r.baseline = Some(p.baseline);
        r.candidate = Some(p.candidate);
        r.z = p.z;
        r.z_threshold = p.z_threshold;
        r.cause = p.cause;
        r.decided_at = Some(p.decided_at.unwrap_or(now.wall));
        if self.on_probation.get(model) == Some(&job_id) {
            self.on_probation.remove(model);
        }
        self.count_probation(state);
        let followed = match state {
            _ if follow.is_some() => follow,
            ProbationState::RolledBack => {
                let figures = probation_input(&v.metric, v.tolerance, p);
                self.rollback_retrain(model, job_id, figures, false, now, ctx)
                    .map_err(|error| {
                        tracing::error!(model_id = model, job_id, error = %error, "cannot start the rollback");
                    })
                    .ok()
            }
            ProbationState::Promoted => self.promote_job(model, job_id, &v, now, ctx),
            ProbationState::Inconclusive if v.escalate => {
                let d = Decision {
                    policy: "probation".into(),
                    reason: format!("the probation of retrain job {job_id} was inconclusive"),
                    ..Decision::manual(model, Action::Escalate)
                };
                let why = format!(
                    "the probation of model {model}'s retrain (job {job_id}) ran out of time with {} of its values",
                    p.candidate.n
                );
                match self.escalate(&d, "inconclusive", why, now, ctx) {
                    Ok(job) => job,
                    Err(error) => {
                        tracing::error!(model_id = model, error = %error, "cannot escalate an inconclusive probation");
                        None
                    }
                }
            }
            _ => None,
        };
        r.followed_by = followed;
        if let Err(error) = self.store.save_probation(job_id, &r) {
            tracing::error!(model_id = model, job_id, error = %error, "cannot record the probation's verdict");
        }
        self.explain_verdict(model, job_id, &r, now);
        tracing::warn!(model_id = model, job_id, probation = state.as_str(), cause = ?r.cause.map(Cause::as_str), z = ?r.z, z_threshold = ?r.z_threshold, follow_up = ?followed, "probation verdict acted on");
    }

    /// A job that already follows retrain `job_id`'s verdict (a rollback or a promote).
    fn follow_up(&self, model: &str, job_id: u64) -> Option<u64> {
        let jobs = self.store.jobs(Some(model), FOLLOW_UP_SEARCH).ok()?;
        jobs.into_iter()
            .filter(|j| matches!(j.action, Action::Rollback | Action::Promote))
            .find(|j| {
                serde_json::from_str::<HookInput>(&j.decision)
                    .ok()
                    .is_some_and(|i| i.rollback_of == Some(job_id) || i.promote_of == Some(job_id))
            })
            .map(|j| j.job_id)
    }

    /// The promote hook for a promoted retrain, if one is configured.
    fn promote_job(
        &mut self,
        model: &str,
        job_id: u64,
        v: &ProbationVerdict,
        now: Now,
        ctx: &mut Context<Self>,
    ) -> Option<u64> {
        let spec = self.hooks().promote.clone()?;
        let result = (|| -> Result<Option<u64>, CommandError> {
            let job = self.follow_up_job(
                model,
                job_id,
                Action::Promote,
                format!("promoted after its probation: job {job_id}"),
                v.probation.cause == Some(Cause::Manual),
                probation_input(&v.metric, v.tolerance, &v.probation),
                now,
            )?;
            self.ensure_runner(model, now);
            self.submit(job, spec.command, now, ctx)
        })();
        match result {
            Ok(id) => id,
            Err(error) => {
                tracing::error!(model_id = model, job_id, error = %error, "cannot start the promote hook");
                None
            }
        }
    }

    /// `visutility promote MODEL`: ends the model's probation now and keeps the candidate.
    pub(super) fn promote(
        &mut self,
        model: &str,
        ctx: &mut Context<Self>,
    ) -> Result<u64, CommandError> {
        let now = Now::read();
        let Some(&job_id) = self.on_probation.get(model) else {
            return Err(CommandError::NotOnProbation(model.into()));
        };
        (self.on_retrained)(ModelNotice::ProbationEnded {
            model_id: model,
            job_id,
            state: State::Promoted,
            cause: Some(Cause::Manual),
            at: now.wall,
        });
        let r = self.store.probation(job_id)?;
        self.on_probation.remove(model);
        let mut p = Probation::new(job_id, Sample::default(), 0);
        p.state = State::Promoted;
        p.cause = Some(Cause::Manual);
        p.decided_at = Some(now.wall);
        if let Some(r) = &r {
            p.baseline = r.baseline.unwrap_or_default();
            p.started_at = r.started_at.unwrap_or(now.wall);
        }
        let v = ProbationVerdict {
            model_id: model.into(),
            metric: r.as_ref().map(|r| r.metric.clone()).unwrap_or_default(),
            tolerance: r.as_ref().map_or(0.0, |r| r.tolerance),
            probation: p,
            escalate: false,
        };
        let followed = self.promote_job(model, job_id, &v, now, ctx);
        if let Some(mut r) = r {
            r.state = ProbationState::Promoted;
            r.cause = Some(Cause::Manual);
            r.decided_at = Some(now.wall);
            r.followed_by = followed;
            self.store.save_probation(job_id, &r)?;
            self.explain_verdict(model, job_id, &r, now);
        }
        self.count_probation(ProbationState::Promoted);
        self.store.flush_sync()?;
        tracing::info!(
            model_id = model,
            job_id,
            "probation ended by an operator: promoted"
        );
        Ok(job_id)
    }

    /// An operator's `rollback` of the retrain on probation: its probation ends, rolled back,
    /// followed by the rollback job `rollback` (journaled first, as a verdict's follow-up is).
    pub(super) fn end_probation_by_rollback(
        &mut self,
        model: &str,
        job_id: u64,
        rollback: u64,
        now: Now,
    ) {
        if self.on_probation.get(model) != Some(&job_id) {
            return;
        }
        self.on_probation.remove(model);
        (self.on_retrained)(ModelNotice::ProbationEnded {
            model_id: model,
            job_id,
            state: State::RolledBack,
            cause: Some(Cause::Manual),
            at: now.wall,
        });
        // In `explain` as a verdict, as `visutility promote`'s is.
        if let Some(r) = self.close(
            job_id,
            ProbationState::RolledBack,
            Some(Cause::Manual),
            Some(rollback),
            now.wall,
        ) {
            self.explain_verdict(model, job_id, &r, now);
        }
    }

    /// The verdict in the model's decision log (`explain`).
    fn explain_verdict(&mut self, model: &str, job_id: u64, r: &ProbationRecord, now: Now) {
        let entry = crate::store::DecisionEntry {
            first_at: now.wall,
            at: now.wall,
            count: 1,
            policy: "probation".into(),
            action: match r.state {
                ProbationState::RolledBack => Action::Rollback,
                ProbationState::Promoted => Action::Promote,
                _ => Action::Escalate,
            },
            statistic: r.z,
            threshold: r.z_threshold,
            reason: format!(
                "probation of retrain job {job_id}: {}{}",
                r.state.as_str(),
                r.cause
                    .map(|c| format!(" ({})", c.as_str()))
                    .unwrap_or_default()
            ),
            event: None,
            outcome: match r.followed_by {
                Some(id) => DecisionOutcome::Job(id),
                None => DecisionOutcome::NoHook,
            },
            note: match (&r.baseline, &r.candidate) {
                (Some(b), Some(c)) => format!(
                    "{}: baseline n {} mean {:.6}, candidate n {} mean {:.6}",
                    r.metric, b.n, b.mean, c.n, c.mean
                ),
                _ => String::new(),
            },
        };
        self.log_entry(model, entry, now);
    }

    /// Rolls back retrain `target` of `model`: a rollback job (queued, or recorded as skipped
    /// without a hook), exempt from cooldown and budget.
    pub(super) fn rollback_retrain(
        &mut self,
        model: &str,
        target: u64,
        probation: ProbationInput,
        manual: bool,
        now: Now,
        ctx: &mut Context<Self>,
    ) -> Result<u64, CommandError> {
        let reason = if manual {
            format!("rolled back by an operator: job {target}")
        } else {
            format!(
                "rolled back after its probation ({}): job {target}",
                probation.cause
            )
        };
        let mut job = self.follow_up_job(
            model,
            target,
            Action::Rollback,
            reason,
            manual,
            probation,
            now,
        )?;
        let job_id = job.job_id;
        self.ensure_runner(model, now);
        let Some(spec) = self.hooks().rollback.clone() else {
            job.note = "no rollback hook configured: recorded only".into();
            job.transition(JobState::Skipped, now.wall);
            self.journal(&job)?;
            self.count(&job);
            tracing::warn!(
                model_id = model,
                job_id,
                rollback_of = target,
                "rollback recorded; no rollback hook configured"
            );
            self.rollback_ended(job_id, false, now, ctx);
            return Ok(job_id);
        };
        tracing::warn!(
            model_id = model,
            job_id,
            rollback_of = target,
            "rolling back a retrain"
        );
        let id = self
            .submit(job, spec.command, now, ctx)?
            .ok_or(CommandError::NoHook(Action::Rollback))?;
        if self.hooks().dry_run {
            // Recorded as skipped: a person still hears of it.
            self.rollback_ended(id, false, now, ctx);
        }
        Ok(id)
    }
}

impl CommandActor {
    /// A rollback or promote job for retrain `target`: its stdin names the retrain
    /// (`rollback_of`, `promote_of`) and carries the retrain's receipt and the probation.
    #[allow(clippy::too_many_arguments)]
    fn follow_up_job(
        &self,
        model: &str,
        target: u64,
        action: Action,
        reason: String,
        manual: bool,
        probation: ProbationInput,
        now: Now,
    ) -> Result<Job, CommandError> {
        let receipt = self.store.receipt(target)?;
        let job_id = self.store.next_job_id()?;
        let policy = if manual && action == Action::Rollback {
            "manual"
        } else {
            "probation"
        };
        let input = HookInput {
            action,
            at: now.wall,
            escalation: None,
            event: None,
            job_id,
            manual,
            model_id: model.into(),
            policy: policy.into(),
            probation: Some(probation),
            promote_of: (action == Action::Promote).then_some(target),
            reason: reason.clone(),
            receipt: receipt.and_then(|r| serde_json::value::RawValue::from_string(r).ok()),
            retry_of: None,
            rollback_of: (action == Action::Rollback).then_some(target),
        };
        Ok(Job::new(
            job_id,
            model,
            action,
            policy,
            &reason,
            input.to_json(),
            now.wall,
        ))
    }
}

/// What a rollback (or promote) hook reads of a probation.
fn probation_input(metric: &str, tolerance: f64, p: &Probation) -> ProbationInput {
    ProbationInput {
        cause: p.cause.map_or("degraded", Cause::as_str).into(),
        metric: Some(metric.into()),
        baseline: Some((&p.baseline).into()),
        // An operator's end (`visutility promote`): the runner knows the baseline, not the
        // candidate the model was judging, so none is shown rather than an empty one.
        candidate: (p.cause != Some(Cause::Manual)).then(|| (&p.candidate).into()),
        tolerance: Some(tolerance),
        z: p.z.filter(|z| z.is_finite()),
        z_threshold: p.z_threshold.filter(|z| z.is_finite()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollback_hook_reads_every_figure_of_the_probation() {
        let mut p = Probation::new(9, Sample::of([0.9, 0.95, 0.92]), 0);
        p.candidate = Sample::of([0.8, 0.82]);
        p.state = State::RolledBack;
        p.cause = Some(Cause::Degraded);
        p.z = Some(3.5);
        p.z_threshold = Some(2.1);
        let v = serde_json::to_value(probation_input("accuracy", 0.01, &p)).unwrap();
        assert_eq!(v["cause"], "degraded");
        assert_eq!(v["metric"], "accuracy");
        assert_eq!(v["baseline"]["n"], 3);
        assert_eq!(v["candidate"]["n"], 2);
        assert!((v["candidate"]["mean"].as_f64().unwrap() - 0.81).abs() < 1e-12);
        assert!(v["baseline"]["std"].as_f64().unwrap() > 0.0);
        assert_eq!(v["tolerance"], 0.01);
        assert_eq!(v["z"], 3.5);
        assert_eq!(v["z_threshold"], 2.1);
    }
}
