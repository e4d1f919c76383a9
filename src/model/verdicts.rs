//! A model's side of probation (contract section 7): the probation's metric is watched as
//! events arrive ([`super::advance`], shared with the replay at load, so a probation resumes
//! exactly where the store left it), its verdict goes to the command actor, and `max_wait_s`
//! is one timer per probation, armed when it starts or when the model loads.
//!
//! The command actor acts on each retrain's verdict once: a model reports the verdict it holds
//! whenever it loads its state (a verdict reached in events that a crash left only in the log
//! is reached again by the replay), and the command actor ignores a verdict it already acted
//! on.

use std::time::Duration;

use actix::prelude::*;

use crate::clock;
use crate::command::messages::ProbationVerdict;
use crate::config::{ModelRule, OnInconclusive, ProbationSpec};
use crate::probation::{Cause, Progress, Sample, State};

use super::{EndProbation, ModelActor, StartProbation, log_write_failure};

impl ModelActor {
    pub(super) fn probation_spec(&self) -> Option<&ProbationSpec> {
        self.rule.as_deref().and_then(|r| r.probation.as_ref())
    }

    /// The baseline a decision freezes for the retrain it may start, by the rule's `baseline`.
    pub(super) fn decision_baseline(&self) -> Option<Sample> {
        let spec = self.probation_spec()?;
        Some(self.record.probation.baseline(spec.baseline))
    }

    /// Sends the verdict the model's probation holds, if it holds one (`fresh`: reached just
    /// now, not found again at a load).
    pub(super) fn report_verdict(&self, fresh: bool) {
        let Some(p) = &self.record.probation.current else {
            return;
        };
        if p.state == State::OnProbation {
            return;
        }
        let spec = self.probation_spec();
        let escalate = p.state == State::Inconclusive
            && p.cause == Some(Cause::Inconclusive)
            && spec.is_some_and(|s| s.on_inconclusive == OnInconclusive::Escalate);
        if fresh {
            tracing::info!(model_id = %self.id, job_id = p.job_id, probation = p.state.as_str(), cause = ?p.cause.map(Cause::as_str), z = ?p.z, z_threshold = ?p.z_threshold, candidate_n = p.candidate.n, "probation verdict");
        } else {
            tracing::debug!(model_id = %self.id, job_id = p.job_id, probation = p.state.as_str(), "the model's probation verdict, reported again at load");
        }
        self.verdicts.do_send(ProbationVerdict {
            model_id: self.id.clone(),
            // Empty when the rule lost its probation: the runner keeps what it recorded.
            metric: spec.map(|s| s.metric.clone()).unwrap_or_default(),
            tolerance: spec.map_or(0.0, |s| s.rule.tolerance),
            probation: p.clone(),
            escalate,
        });
    }

    /// After the state was loaded: the verdict it holds goes to the command actor (which acts
    /// on it once), and a running probation's `max_wait_s` is armed.
    pub(super) fn after_load(&mut self, ctx: &mut Context<Self>) {
        if !self.loaded {
            return;
        }
        self.report_verdict(false);
        self.probation_dropped(None);
        self.arm_max_wait(ctx);
    }

    /// One timer for the running probation's `max_wait_s` (what is left of it).
    fn arm_max_wait(&mut self, ctx: &mut Context<Self>) {
        let Some(spec) = self.probation_spec() else {
            return;
        };
        let Some(p) = self.record.probation.current.as_ref() else {
            return;
        };
        if p.state != State::OnProbation || self.max_wait_armed == Some(p.job_id) {
            return;
        }
        let length = spec.max_wait_s as f64;
        let left = clock::remaining(p.started_at + length, clock::wall(), length);
        let job_id = p.job_id;
        self.max_wait_armed = Some(job_id);
        ctx.run_later(Duration::from_secs_f64(left), move |act, _ctx| {
            if act.max_wait_armed == Some(job_id) {
                act.max_wait_armed = None;
            }
            act.max_wait_passed(job_id);
        });
    }

    /// `max_wait_s` passed: a probation still short of its `events` values is inconclusive,
    /// and `on_inconclusive` says what follows.
    fn max_wait_passed(&mut self, job_id: u64) {
        if let Err(error) = self.ensure_loaded() {
            tracing::error!(model_id = %self.id, error = %error, "cannot load the model's state to end its probation");
            return;
        }
        let Some(spec) = self.probation_spec().cloned() else {
            return;
        };
        let Some(p) = self.record.probation.current.as_mut() else {
            return;
        };
        if p.job_id != job_id || p.state != State::OnProbation {
            return;
        }
        let state = match spec.on_inconclusive {
            OnInconclusive::Rollback => State::RolledBack,
            OnInconclusive::Keep | OnInconclusive::Escalate => State::Inconclusive,
        };
        p.end(&spec.rule, state, Some(Cause::Inconclusive), clock::wall());
        tracing::warn!(model_id = %self.id, job_id, candidate_n = p.candidate.n, events = spec.rule.events, max_wait_s = spec.max_wait_s, on_inconclusive = spec.on_inconclusive.as_str(), "probation ran out of time before its sample was complete");
        self.persist_now();
        self.report_verdict(true);
    }

    /// The model's rule has no probation any more while one runs: a reload took it away
    /// (`old` is the rule before), or it went while the daemon was down (`None`). The
    /// probation ends inconclusive, as the runner ends it at a start with such a rule, and the
    /// runner hears of it; without this the model would hold its decisions for good.
    pub(super) fn probation_dropped(&mut self, old: Option<&ModelRule>) {
        if self.probation_spec().is_some() {
            return;
        }
        let Some(p) = self.record.probation.current.as_mut() else {
            return;
        };
        if p.state != State::OnProbation {
            return;
        }
        let now = clock::wall();
        match old.and_then(|r| r.probation.as_ref()) {
            Some(spec) => p.end(&spec.rule, State::Inconclusive, None, now),
            None => {
                p.state = State::Inconclusive;
                p.decided_at = Some(now);
            }
        }
        tracing::warn!(model_id = %self.id, job_id = p.job_id, "the model's rule has no probation any more: its retrain's probation ends inconclusive");
        self.persist_now();
        // With no probation in the rule the metric goes empty: the runner keeps the one it
        // recorded.
        self.report_verdict(true);
    }

    /// A checkpoint now: the probation changed without an event the log could replay.
    fn persist_now(&mut self) {
        if let Err(error) = self.fold() {
            self.unlogged = true;
            log_write_failure(&self.id, &error);
        }
    }

    /// What `models` shows of the probation, while one runs.
    pub(super) fn probation_view(&self, record: &crate::store::ModelRecord) -> Option<Progress> {
        let spec = self.probation_spec()?;
        let p = record.probation.current.as_ref()?;
        if p.state != State::OnProbation {
            return None;
        }
        let mut plan = p.plan.clone();
        Some(Progress {
            job_id: p.job_id,
            metric: spec.metric.clone(),
            baseline: (&p.baseline).into(),
            candidate: (&p.candidate).into(),
            events: spec.rule.events,
            warmup_left: p.warmup_left,
            z: p.current_z(&spec.rule).filter(|z| z.is_finite()),
            z_threshold: Some(
                plan.get(&spec.rule, p.baseline.n)
                    .next_boundary(p.candidate.n + 1),
            )
            .filter(|z| z.is_finite()),
            started_at: p.started_at,
            deadline: p.started_at + spec.max_wait_s as f64,
        })
    }
}

impl Handler<StartProbation> for ModelActor {
    type Result = ();

    fn handle(&mut self, msg: StartProbation, ctx: &mut Context<Self>) {
        if let Err(error) = self.ensure_loaded() {
            tracing::error!(model_id = %self.id, job_id = msg.job_id, error = %error, "cannot load the model's state to start its probation");
            return;
        }
        if self
            .record
            .probation
            .current
            .as_ref()
            .is_some_and(|p| p.job_id == msg.job_id)
        {
            // Sent again at start: the store has it already.
            self.arm_max_wait(ctx);
            return;
        }
        if msg.reset {
            self.reset_policies(true);
        }
        let Some(spec) = self.probation_spec().cloned() else {
            self.persist_now();
            return;
        };
        let baseline = msg
            .baseline
            .filter(|b| b.n >= 2)
            .or_else(|| self.decision_baseline())
            .unwrap_or_default();
        let warmup = self.rule.as_deref().map_or(0, |r| r.warmup_events);
        self.record
            .probation
            .start(msg.job_id, baseline, warmup, msg.at);
        if baseline.n < 2 {
            // Nothing to compare with (a model that saw fewer than two values of the
            // metric): the retrain is kept, and said so.
            tracing::warn!(model_id = %self.id, job_id = msg.job_id, metric = %spec.metric, baseline_n = baseline.n, "no baseline to judge the retrain by: its probation is inconclusive");
            if let Some(p) = self.record.probation.current.as_mut() {
                p.end(&spec.rule, State::Inconclusive, None, msg.at);
            }
            self.persist_now();
            self.report_verdict(true);
            return;
        }
        tracing::info!(model_id = %self.id, job_id = msg.job_id, metric = %spec.metric, baseline_n = baseline.n, baseline_mean = baseline.mean, events = spec.rule.events, "probation started");
        self.persist_now();
        self.arm_max_wait(ctx);
    }
}

impl Handler<EndProbation> for ModelActor {
    type Result = ();

    fn handle(&mut self, msg: EndProbation, _ctx: &mut Context<Self>) {
        if let Err(error) = self.ensure_loaded() {
            tracing::error!(model_id = %self.id, job_id = msg.job_id, error = %error, "cannot load the model's state to end its probation");
            return;
        }
        let Some(spec) = self.probation_spec().cloned() else {
            return;
        };
        let Some(p) = self.record.probation.current.as_mut() else {
            return;
        };
        if p.job_id != msg.job_id || p.state != State::OnProbation {
            return;
        }
        p.end(&spec.rule, msg.state, msg.cause, msg.at);
        if msg.state == State::Promoted && p.candidate.n >= 2 {
            self.record.probation.last_promoted = Some(p.candidate);
        }
        tracing::info!(model_id = %self.id, job_id = msg.job_id, probation = msg.state.as_str(), "probation ended by an operator");
        self.persist_now();
    }
}
