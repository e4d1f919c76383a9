//! Offline replay: recorded events through the configured policies, one NDJSON line per signal.
//! No socket, no hooks, no state written. It uses the same `PolicyState::observe` as the daemon.
//!
//! Beyond the plain replay (contract section 5, unchanged without options):
//! - [`Options::detail`] adds to each signal line its `ts`, the policy's `statistic` and
//!   `threshold` at that moment, its `state` as named numbers, and the `reason` text the hook
//!   would get;
//! - [`Options::simulate`] replays as the daemon would have acted: the model's warm-up and one
//!   decision per action per batch (each event is a batch) through [`crate::model::advance`],
//!   then the hook runner's rules ([`crate::command::rules`]: pause, cooldown, loop guard,
//!   budget) at the events' `ts`, a job absorbing decisions while it runs (`retrain_s`), and,
//!   after a job assumed to succeed, its cooldown, the loop guard's memory and
//!   `reset_on_retrain`; it prints the jobs that would have started;
//! - with `simulate`, a model whose rule has `[models.probation]` puts each retrain that
//!   succeeded on probation (contract section 7): the [`crate::probation`] rule judges the
//!   metric's values after it against a baseline, and each verdict is one more line
//!   ([`Judged`]); a rolled-back retrain is undone by a rollback assumed to succeed at once;
//! - every run returns one [`Row`] per model and policy for `--summary` and `--sweep`;
//! - [`run_observed`] shows each policy's every step and each job to an [`Observer`]: the
//!   [`report`] draws them.

use std::collections::HashMap;
use std::io::{BufRead, Write};

use crate::clock::Now;
use crate::command::rules::Runner;
use crate::command::rules::{self, Verdict};
use crate::config::{Config, ModelRule, OnInconclusive};
use crate::model::advance;
use crate::policy::detect::Signal;
use crate::policy::{Action, Fire, Obs, PolicySpec, PolicyState, Reason, StateKind, bind_states};
use crate::probation::{self, Cause, Plan, Probation, Sample, State};
use crate::protocol::{self, Line};
use crate::store::ModelRecord;

pub mod report;
mod simulated;

use simulated::{Ending, Open, Trial};
pub use simulated::{Judged, Verdicts};

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("cannot read the events")]
    Read(#[source] std::io::Error),
    #[error("cannot write the signals")]
    Write(#[source] std::io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("--sweep takes KIND.PARAM=V1,V2,..., got {0:?}")]
    Syntax(String),
    #[error("the config is not valid TOML")]
    Toml(#[source] toml::de::Error),
    #[error("no policy of kind {0} in the config's [[models]] rules")]
    NoSuchKind(String),
}

/// How to replay.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Signal lines carry `ts`, `statistic`, `threshold`, `state` and `reason`.
    pub detail: bool,
    /// Replay as the daemon would have acted, printing jobs instead of signals.
    pub simulate: Option<Simulate>,
    /// Print nothing per signal or job (the caller prints the summary).
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Simulate {
    /// How long a retrain (or escalate) hook is assumed to run, in seconds of event time.
    pub retrain_s: f64,
}

/// What a replay saw.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub events: u64,
    pub signals: u64,
    /// Invalid lines: (1-based line number, error), reported, not replayed.
    pub rejected: Vec<(u64, String)>,
    /// One row per model and policy, in order of first appearance.
    pub rows: Vec<Row>,
}

/// One model and policy over a replay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub model_id: String,
    pub policy: String,
    pub kind: &'static str,
    /// Events of the model (whether or not they carried the policy's metric).
    pub events: u64,
    /// Drift signals (with `simulate`: the decisions the model sent, after warm-up).
    pub signals: u64,
    pub warnings: u64,
    /// With `simulate`: jobs that would have started for this policy's decisions.
    pub jobs: Option<u64>,
    /// With `simulate`: decisions that started nothing, by why (`running`, `cooldown`,
    /// `budget`, `loop_guard`, `paused`, `no_hook`, `batch`, `probation`).
    pub held: Vec<(&'static str, u64)>,
    /// With `simulate` and the rule's `[models.probation]`: the verdicts on the retrains this
    /// policy's decisions started.
    pub probation: Option<Verdicts>,
    /// The first drift signal: (index, ts).
    pub first_signal: Option<(u64, f64)>,
}

impl Row {
    /// Drift signals per 10,000 events of the model.
    pub fn per_10k(&self) -> f64 {
        if self.events == 0 {
            0.0
        } else {
            self.signals as f64 * 10_000.0 / self.events as f64
        }
    }

    fn hold(&mut self, why: &'static str) {
        match self.held.iter_mut().find(|(k, _)| *k == why) {
            Some((_, n)) => *n += 1,
            None => self.held.push((why, 1)),
        }
    }

    /// The row as JSON (for `--summary --json`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "model_id": self.model_id,
            "policy": self.policy,
            "kind": self.kind,
            "events": self.events,
            "signals": self.signals,
            "warnings": self.warnings,
            "first_signal": self.first_signal.map(|(i, ts)| serde_json::json!({"index": i, "ts": ts})),
            "signals_per_10k": (self.per_10k() * 100.0).round() / 100.0,
        });
        if let Some(j) = self.jobs {
            v["jobs"] = j.into();
            v["held"] = self
                .held
                .iter()
                .map(|(k, n)| ((*k).to_owned(), serde_json::Value::from(*n)))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        if let Some(p) = &self.probation {
            v["probation"] = serde_json::json!({
                "promoted": p.promoted,
                "rolled_back": p.rolled_back,
                "inconclusive": p.inconclusive,
            });
        }
        v
    }
}

/// Sees a replay step by step, for those who draw it ([`report`]). Both methods do nothing by
/// default; [`run`] replays with `()`, which sees nothing.
pub trait Observer {
    /// A policy has taken one event (the plain replay, without `simulate`).
    fn step(&mut self, _step: &Step<'_>) {}
    /// A job would have started (with `simulate`).
    fn job(&mut self, _job: &Job<'_>) {}
    /// A retrain's probation ended (with `simulate` and `[models.probation]`).
    fn verdict(&mut self, _verdict: &Judged<'_>) {}
}

impl Observer for () {}

/// One policy after one event of the plain replay.
pub struct Step<'a> {
    /// The policy's row in [`Summary::rows`].
    pub row: usize,
    /// The event's 0-based line in the input (the signal lines' `index`).
    pub index: u64,
    /// The event's 0-based place among its model's events.
    pub nth: u64,
    pub obs: &'a Obs,
    pub spec: &'a PolicySpec,
    /// The policy's state after the event.
    pub state: &'a PolicyState,
    pub fire: Option<&'a Fire<'a>>,
    /// A drift signal line was written for it (or would have been, when quiet).
    pub drift: bool,
    /// A warning signal line was written for it (or would have been).
    pub warning: bool,
}

/// A job the simulation would have started (one `--simulate` line).
pub struct Job<'a> {
    /// The row of the policy whose decision started it.
    pub row: usize,
    pub index: u64,
    /// The event's 0-based place among its model's events.
    pub nth: u64,
    pub ts: f64,
    /// 1-based, over the whole replay (the lines' `job`).
    pub number: u64,
    pub action: Action,
    pub reason: &'a str,
}

/// A model's replay state.
struct ModelRun {
    /// Index of its first row in `Summary::rows` (one per policy, in the rule's order).
    first_row: usize,
    states: Vec<PolicyState>,
    /// With `simulate`: the model's state as the daemon keeps it, and the runner's.
    sim: Option<SimState>,
}

struct SimState {
    record: ModelRecord,
    runner: Runner,
    /// The job running.
    busy: Option<Busy>,
    /// With the rule's `[models.probation]`.
    trial: Option<Trial>,
}

/// A simulated job while it runs.
struct Busy {
    /// When it ends (it succeeds at the first event at or after).
    end: f64,
    action: Action,
    /// The model's row (0-based within the model) of the policy whose decision started it.
    row: usize,
    /// Its number (the job line's `job`).
    job: u64,
    /// A retrain under `[models.probation]`: the baseline, frozen at the decision.
    baseline: Option<Sample>,
}

/// Replays `input` and writes signals (or, with `simulate`, jobs) to `out`. `index` is the
/// event's 0-based line in the input, so that `sed -n "$((index+1))p"` shows it even when
/// other lines were invalid.
pub fn run(
    config: &Config,
    input: impl BufRead,
    out: impl Write,
    opts: &Options,
) -> Result<Summary, BacktestError> {
    run_observed(config, input, out, opts, &mut ())
}

/// [`run`], showing every step to `observer`.
pub fn run_observed(
    config: &Config,
    input: impl BufRead,
    mut out: impl Write,
    opts: &Options,
    observer: &mut impl Observer,
) -> Result<Summary, BacktestError> {
    let mut models: HashMap<String, ModelRun> = HashMap::new();
    let mut summary = Summary::default();
    let mut line_no = 0u64;
    let mut jobs = 0u64;
    let mut buf = Vec::new();
    let mut input = input;
    let mut w = std::io::BufWriter::new(&mut out);
    loop {
        buf.clear();
        let n = input
            .read_until(b'\n', &mut buf)
            .map_err(BacktestError::Read)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let ev = match protocol::decode_line(line) {
            Ok(Line::Event(ev)) => ev,
            Ok(_) => continue,
            Err(e) => {
                summary.rejected.push((line_no, e.to_string()));
                continue;
            }
        };
        let index = line_no - 1;
        summary.events += 1;
        let Some(rule) = config.rule_for(ev.model_id) else {
            continue;
        };
        let run = models.entry(ev.model_id.to_owned()).or_insert_with(|| {
            let first_row = summary.rows.len();
            summary.rows.extend(rule.policies.iter().map(|spec| {
                Row {
                    model_id: ev.model_id.to_owned(),
                    policy: spec.name.clone(),
                    kind: spec.kind.kind_name(),
                    jobs: opts.simulate.map(|_| 0),
                    probation: opts
                        .simulate
                        .and(rule.probation.as_ref())
                        .map(|_| Verdicts::default()),
                    ..Row::default()
                }
            }));
            ModelRun {
                first_row,
                states: bind_states(&rule.policies, Vec::new()),
                sim: opts.simulate.map(|_| SimState {
                    record: ModelRecord {
                        policies: bind_states(&rule.policies, Vec::new()),
                        ..ModelRecord::default()
                    },
                    runner: Runner::default(),
                    busy: None,
                    trial: rule.probation.as_ref().map(|_| Trial::default()),
                }),
            }
        });
        let rows = &mut summary.rows[run.first_row..run.first_row + rule.policies.len()];
        for row in rows.iter_mut() {
            row.events += 1;
        }
        // Without a `ts`, an event's time is its line index: replays are reproducible.
        let obs = Obs::from_event(&ev, index as f64);
        if let (Some(sim), Some(sim_opts)) = (run.sim.as_mut(), opts.simulate) {
            let ctx = SimCtx {
                config,
                rule,
                retrain_s: sim_opts.retrain_s,
                model_id: ev.model_id,
                index,
                first_row: run.first_row,
                quiet: opts.quiet,
            };
            let signals = simulate(&ctx, sim, &obs, rows, &mut jobs, &mut w, observer)?;
            summary.signals += signals;
            continue;
        }
        for (i, ((spec, state), row)) in rule
            .policies
            .iter()
            .zip(run.states.iter_mut())
            .zip(rows.iter_mut())
            .enumerate()
        {
            let before = (opts.detail && matches!(state.kind, StateKind::Detector(_)))
                .then(|| state.state(spec));
            let fire = state.observe(spec, &obs);
            // The warning zone as River's warning_detected reads after the update, which can
            // be true on a drift too.
            let warning = match &state.kind {
                StateKind::Detector(d) => d.warning_detected(),
                _ => false,
            };
            let drift = fire.as_ref().filter(|f| f.signal == Signal::Drift);
            let warned = warning || fire.as_ref().is_some_and(|f| f.signal == Signal::Warning);
            if drift.is_some() {
                row.signals += 1;
                row.first_signal.get_or_insert((index, obs.ts));
            }
            if warned {
                row.warnings += 1;
            }
            observer.step(&Step {
                row: run.first_row + i,
                index,
                nth: row.events - 1,
                obs: &obs,
                spec,
                state,
                fire: fire.as_ref(),
                drift: drift.is_some(),
                warning: warned,
            });
            if opts.quiet {
                summary.signals += u64::from(drift.is_some()) + u64::from(warned);
                continue;
            }
            let mut line = |signal: Signal| {
                let mut v = serde_json::json!({
                    "index": index,
                    "model_id": ev.model_id,
                    "policy": spec.name,
                    "signal": if signal == Signal::Drift { "drift" } else { "warning" },
                });
                if signal == Signal::Drift
                    && let Some(a) = drift.and_then(|f| f.action)
                {
                    v["action"] = a.as_str().into();
                }
                if opts.detail {
                    let now = state.state(spec);
                    let reason = match fire.as_ref().filter(|f| f.signal == signal) {
                        Some(f) => f.reason,
                        None => Reason::Detector {
                            kind: spec.kind.kind_name(),
                            signal,
                            metric: &spec.metric,
                        },
                    };
                    let (statistic, threshold) =
                        crate::policy::compared(spec, Some(&reason), || now.clone(), &obs);
                    v["ts"] = obs.ts.into();
                    v["statistic"] = statistic.into();
                    v["threshold"] = threshold.into();
                    v["reason"] = reason.to_string().into();
                    v["state"] = serde_json::to_value(&now).unwrap_or_default();
                    if let Some(before) = &before
                        && signal == Signal::Drift
                    {
                        // ADWIN's cut: its width and estimate before and after the update.
                        v["before"] = serde_json::to_value(before).unwrap_or_default();
                    }
                }
                summary.signals += 1;
                writeln!(w, "{v}")
            };
            if drift.is_some() {
                line(Signal::Drift).map_err(BacktestError::Write)?;
            }
            if warned {
                line(Signal::Warning).map_err(BacktestError::Write)?;
            }
        }
    }
    w.flush().map_err(BacktestError::Write)?;
    Ok(summary)
}

struct SimCtx<'a> {
    config: &'a Config,
    rule: &'a ModelRule,
    retrain_s: f64,
    model_id: &'a str,
    index: u64,
    /// The model's first row in [`Summary::rows`].
    first_row: usize,
    quiet: bool,
}

/// One event as the daemon would have handled it: the model applies it as a batch of one
/// (warm-up, one decision per action), then each decision meets the hook runner's rules at
/// the event's `ts`. With `[models.probation]`, the retrain on probation takes the event's
/// value of the metric first, and decisions during a probation start nothing (with
/// `fail_fast`, the first rolls the retrain back). Returns the drift decisions sent.
fn simulate(
    ctx: &SimCtx<'_>,
    sim: &mut SimState,
    obs: &Obs,
    rows: &mut [Row],
    jobs: &mut u64,
    w: &mut impl Write,
    observer: &mut impl Observer,
) -> Result<u64, BacktestError> {
    let hooks = &ctx.config.hooks;
    let spec_p = ctx.rule.probation.as_ref();
    // A job that ended before this event: assumed to have succeeded at its end.
    if let Some(job) = sim.busy.take_if(|b| b.end <= obs.ts) {
        rules::job_ended(
            hooks,
            &mut sim.runner,
            job.action,
            &ctx.rule.policies[job.row].name,
            true,
            Now::same(job.end),
        );
        if job.action != Action::Escalate && ctx.rule.reset_on_retrain {
            reset(ctx, sim);
        }
        // A baseline of fewer than two values judges nothing: the retrain is simply kept.
        if let (Some(spec), Some(trial), Some(baseline)) =
            (spec_p, sim.trial.as_mut(), job.baseline)
            && baseline.n >= 2
        {
            trial.open = Some(Open {
                probation: Probation::new(job.job, baseline, ctx.rule.warmup_events),
                plan: Plan::new(&spec.rule, baseline.n),
                start: job.end,
                row: job.row,
            });
        }
    }
    let value = spec_p
        .and_then(|spec| obs.metric(&spec.metric))
        .filter(|v| v.is_finite());
    if let (Some(spec), Some(trial)) = (spec_p, sim.trial.as_mut())
        && let Some(open) = trial.open.as_mut()
    {
        let ending = if obs.ts > open.start + spec.max_wait_s as f64 {
            // The sample did not fill in time.
            let z = open.probation.current_z(&spec.rule);
            Some(match spec.on_inconclusive {
                OnInconclusive::Keep => Ending::new(State::Inconclusive, None, z, None),
                OnInconclusive::Rollback => {
                    Ending::new(State::RolledBack, Some(Cause::Inconclusive), z, None)
                }
                OnInconclusive::Escalate => Ending {
                    escalation: true,
                    ..Ending::new(State::Inconclusive, None, z, None)
                },
            })
        } else if let Some(v) = value {
            match open.probation.observe(&spec.rule, &open.plan, v) {
                probation::Verdict::Continue => None,
                probation::Verdict::RolledBack { z, z_threshold } => Some(Ending::new(
                    State::RolledBack,
                    Some(Cause::Degraded),
                    Some(z),
                    Some(z_threshold),
                )),
                probation::Verdict::Promoted { z, z_threshold } => Some(Ending::new(
                    State::Promoted,
                    None,
                    Some(z),
                    Some(z_threshold),
                )),
            }
        } else {
            None
        };
        if let Some(ending) = ending {
            end_probation(ctx, sim, obs, rows, ending, w, observer)?;
        }
    }
    let mut decisions: Vec<(usize, Action, String)> = Vec::new();
    let mut sent = [false; 3];
    let mut signals = 0u64;
    advance(
        &mut sim.record,
        Some(ctx.rule),
        std::slice::from_ref(obs),
        |fired| {
            // The warm-up decides nothing, as in the daemon.
            if fired.warmup {
                return;
            }
            let Some(i) = ctx
                .rule
                .policies
                .iter()
                .position(|s| std::ptr::eq(s, fired.spec))
            else {
                return;
            };
            let Some(action) = fired.action else {
                rows[i].warnings += 1;
                return;
            };
            rows[i].signals += 1;
            signals += 1;
            rows[i].first_signal.get_or_insert((ctx.index, obs.ts));
            // As the model actor: one decision per action per batch goes to the runner.
            let slot = action as usize;
            if sent[slot] {
                rows[i].hold("batch");
            } else {
                sent[slot] = true;
                decisions.push((i, action, fired.reason.to_string()));
            }
        },
    );
    // Decisions of an event met on probation start nothing, even after a `fail_fast`
    // rollback at the first of them.
    let on_probation = sim.trial.as_ref().is_some_and(|t| t.open.is_some());
    for (i, action, reason) in decisions {
        let spec = &ctx.rule.policies[i];
        if on_probation {
            rows[i].hold("probation");
            if let (Some(p), Some(trial)) = (spec_p, sim.trial.as_ref())
                && p.fail_fast
                && let Some(open) = &trial.open
            {
                let z = open.probation.current_z(&p.rule);
                let ending = Ending::new(State::RolledBack, Some(Cause::PolicyFired), z, None);
                end_probation(ctx, sim, obs, rows, ending, w, observer)?;
            }
            continue;
        }
        if sim.busy.is_some() {
            rows[i].hold("running");
            continue;
        }
        let ask = rules::Ask {
            policy: &spec.name,
            action,
            reason: &reason,
            manual: false,
        };
        let verdict = rules::decide(
            hooks,
            ctx.rule.loop_window_s,
            &mut sim.runner,
            ask,
            Now::same(obs.ts),
        );
        let (job_action, job_reason, cause) = match verdict {
            Verdict::Hold(h) => {
                rows[i].hold(h.as_str());
                continue;
            }
            Verdict::Escalate { cause, why } => {
                if hooks.escalate.is_none() {
                    // The daemon journals it as skipped: no hook runs.
                    rows[i].hold("no_hook");
                    continue;
                }
                (Action::Escalate, why, Some(cause))
            }
            Verdict::Run {
                action: to,
                reason: why,
            } => {
                let cause = (to != action).then_some("loop_guard");
                (to, why, cause)
            }
        };
        *jobs += 1;
        if let Some(j) = rows[i].jobs.as_mut() {
            *j += 1;
        }
        let baseline = match (spec_p, sim.trial.as_ref()) {
            (Some(p), Some(trial)) if job_action.is_retrain() => Some(trial.baseline(p)),
            _ => None,
        };
        sim.busy = Some(Busy {
            end: obs.ts + ctx.retrain_s,
            action: job_action,
            row: i,
            job: *jobs,
            baseline,
        });
        observer.job(&Job {
            row: ctx.first_row + i,
            index: ctx.index,
            nth: rows[i].events - 1,
            ts: obs.ts,
            number: *jobs,
            action: job_action,
            reason: &job_reason,
        });
        if ctx.quiet {
            continue;
        }
        let mut v = serde_json::json!({
            "index": ctx.index,
            "model_id": ctx.model_id,
            "policy": spec.name,
            "action": job_action.as_str(),
            "ts": obs.ts,
            "job": *jobs,
            "reason": job_reason,
        });
        if let Some(cause) = cause {
            v["escalation"] =
                serde_json::json!({"cause": cause, "decided_action": action.as_str()});
        }
        writeln!(w, "{v}").map_err(BacktestError::Write)?;
    }
    if let (Some(spec), Some(trial), Some(v)) = (spec_p, sim.trial.as_mut(), value) {
        trial.keep(spec, v);
    }
    Ok(signals)
}

/// The model's policies start afresh with the rule's warm-up (after a retrain or a rollback,
/// under `reset_on_retrain`).
fn reset(ctx: &SimCtx<'_>, sim: &mut SimState) {
    sim.record.policies = ctx.rule.policies.iter().map(PolicyState::new).collect();
    sim.record.warmup_left = ctx.rule.warmup_events;
}

/// Ends the model's open probation at this event: counts and prints the verdict; a promotion
/// is `last_promoted`'s next baseline; a rollback is assumed to succeed at once, which starts
/// a cooldown and (under `reset_on_retrain`) resets the policies with warm-up, as a retrain's
/// end does, and starts no probation.
fn end_probation(
    ctx: &SimCtx<'_>,
    sim: &mut SimState,
    obs: &Obs,
    rows: &mut [Row],
    ending: Ending,
    w: &mut impl Write,
    observer: &mut impl Observer,
) -> Result<(), BacktestError> {
    let (Some(spec), Some(trial)) = (ctx.rule.probation.as_ref(), sim.trial.as_mut()) else {
        return Ok(());
    };
    let Some(open) = trial.open.take() else {
        return Ok(());
    };
    let policy = &ctx.rule.policies[open.row].name;
    match ending.outcome {
        State::Promoted => trial.values.last_promoted = Some(open.probation.candidate),
        State::RolledBack => {
            rules::job_ended(
                &ctx.config.hooks,
                &mut sim.runner,
                Action::Rollback,
                policy,
                true,
                Now::same(obs.ts),
            );
            if ctx.rule.reset_on_retrain {
                reset(ctx, sim);
            }
        }
        _ => {}
    }
    let row = &mut rows[open.row];
    if let Some(v) = row.probation.as_mut() {
        v.count(ending.outcome);
    }
    let judged = Judged {
        row: ctx.first_row + open.row,
        index: ctx.index,
        nth: row.events - 1,
        ts: obs.ts,
        job: open.probation.job_id,
        outcome: ending.outcome,
        cause: ending.cause,
        // JSON has no infinity: a sample without variance gives null.
        z: ending.z.filter(|z| z.is_finite()),
        z_threshold: ending.z_threshold.filter(|z| z.is_finite()),
        baseline: open.probation.baseline,
        candidate: open.probation.candidate,
        escalation: ending.escalation,
        metric: &spec.metric,
    };
    observer.verdict(&judged);
    if !ctx.quiet {
        writeln!(w, "{}", judged.to_json(ctx.model_id, policy)).map_err(BacktestError::Write)?;
    }
    Ok(())
}

/// The config texts of a `--sweep KIND.PARAM=V1,V2,...`: every policy of kind `KIND` in every
/// `[[models]]` rule gets `PARAM = V`, one variant per value, each labelled `KIND.PARAM=V`.
/// A value is a TOML integer, float or boolean where it parses as one, else a string.
pub fn sweep_variants(text: &str, sweep: &str) -> Result<Vec<(String, String)>, SweepError> {
    let syntax = || SweepError::Syntax(sweep.to_owned());
    let (key, values) = sweep.split_once('=').ok_or_else(syntax)?;
    let (kind, param) = key.split_once('.').ok_or_else(syntax)?;
    if kind.is_empty() || param.is_empty() || values.is_empty() {
        return Err(syntax());
    }
    let table: toml::Table = text.parse().map_err(SweepError::Toml)?;
    let mut out = Vec::new();
    for raw in values.split(',') {
        let raw = raw.trim();
        let value = if let Ok(i) = raw.parse::<i64>() {
            toml::Value::Integer(i)
        } else if let Ok(f) = raw.parse::<f64>() {
            toml::Value::Float(f)
        } else if let Ok(b) = raw.parse::<bool>() {
            toml::Value::Boolean(b)
        } else {
            toml::Value::String(raw.to_owned())
        };
        let mut t = table.clone();
        let mut found = false;
        if let Some(toml::Value::Array(models)) = t.get_mut("models") {
            for m in models.iter_mut() {
                let Some(toml::Value::Array(policies)) =
                    m.as_table_mut().and_then(|m| m.get_mut("policies"))
                else {
                    continue;
                };
                for p in policies.iter_mut().filter_map(toml::Value::as_table_mut) {
                    if p.get("kind").and_then(toml::Value::as_str) == Some(kind) {
                        p.insert(param.to_owned(), value.clone());
                        found = true;
                    }
                }
            }
        }
        if !found {
            return Err(SweepError::NoSuchKind(kind.to_owned()));
        }
        out.push((format!("{kind}.{param}={raw}"), t.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    const CONFIG: &str = r#"
[hooks]
full = { command = ["/bin/true"], timeout_s = 60 }
cooldown_s = 0

[[models]]
match = "*"
reset_on_retrain = true
warmup_events = 2

[[models.policies]]
kind = "drift_window"
window = 1
threshold = 0.5
"#;

    fn events(n: usize) -> String {
        (0..n)
            .map(|i| {
                format!(
                    "{{\"model_id\":\"m\",\"drift_score\":0.9,\"ts\":{}}}\n",
                    i * 10
                )
            })
            .collect()
    }

    #[test]
    fn sweep_variants_set_the_parameter_on_every_policy_of_the_kind() {
        let v = sweep_variants(CONFIG, "drift_window.threshold=0.2,1,x").unwrap();
        let labels: Vec<&str> = v.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "drift_window.threshold=0.2",
                "drift_window.threshold=1",
                "drift_window.threshold=x"
            ]
        );
        assert!(v[0].1.contains("threshold = 0.2"), "{}", v[0].1);
        assert!(v[2].1.contains("threshold = \"x\""), "{}", v[2].1);
        for bad in [
            "drift_window",
            "threshold=1",
            ".x=1",
            "drift_window.threshold=",
        ] {
            assert!(
                matches!(sweep_variants(CONFIG, bad), Err(SweepError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            sweep_variants(CONFIG, "adwin.delta=0.1"),
            Err(SweepError::NoSuchKind(_))
        ));
    }

    /// After a job (assumed to succeed at its end) `reset_on_retrain` starts the policies
    /// afresh with the rule's warm-up: the two events after it decide nothing.
    #[test]
    fn simulate_resets_on_retrain_and_warms_up() {
        let config = Config::from_toml(CONFIG, &Env::default()).unwrap();
        let mut out = Vec::new();
        let opts = Options {
            simulate: Some(Simulate { retrain_s: 5.0 }),
            ..Options::default()
        };
        let s = run(&config, events(6).as_bytes(), &mut out, &opts).unwrap();
        let jobs: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let idx: Vec<u64> = jobs.iter().map(|j| j["index"].as_u64().unwrap()).collect();
        // Job at 0 ends at ts 5; events 1 and 2 are the warm-up; 3 fires (its job ends at
        // ts 35), 4 and 5 are the warm-up again.
        assert_eq!(idx, [0, 3], "{jobs:?}");
        assert_eq!(s.rows[0].jobs, Some(2));
        // Warm-up events decide nothing, so they are not signals of the simulation.
        assert_eq!(s.rows[0].signals, 2, "{:?}", s.rows[0]);
        assert!(s.rows[0].held.is_empty(), "{:?}", s.rows[0]);
    }

    /// A model watched by `min_accuracy = 0.7` with `[models.probation]` on accuracy (200
    /// values, looks from 20) and `extra` keys in it; every job is done at once.
    fn probation_config(extra: &str, cooldown_s: u64) -> Config {
        let text = format!(
            r#"
[hooks]
fine_tune = {{ command = ["/bin/true"], timeout_s = 60 }}
escalate = {{ command = ["/bin/true"], timeout_s = 60 }}
cooldown_s = {cooldown_s}

[[models]]
match = "*"
reset_on_retrain = true
warmup_events = 2

[[models.policies]]
kind = "static_threshold"
min_accuracy = 0.7

[models.probation]
metric = "accuracy"
events = 200
min_events = 20
{extra}
"#
        );
        Config::from_toml(&text, &Env::default()).unwrap()
    }

    /// Some spread around a level, the same on every run.
    fn noise(i: usize) -> f64 {
        ((i * 7) % 11) as f64 * 0.002 - 0.01
    }

    /// `n` events of model m, 10 s apart, event `i`'s accuracy `acc(i)` (none when `None`).
    fn accuracy_stream(n: usize, acc: impl Fn(usize) -> Option<f64>) -> String {
        (0..n)
            .map(|i| {
                let mut v = serde_json::json!({"model_id": "m", "ts": i * 10});
                if let Some(a) = acc(i) {
                    v["accuracy"] = a.into();
                }
                format!("{v}\n")
            })
            .collect()
    }

    /// Accuracy 0.93 for 3000 events, one drop to 0.5 at event 3000 (a retrain, done at
    /// once: its probation starts at 3001, whose first two values are the warm-up), then
    /// `after(k)` for event 3001 + k.
    fn after_a_retrain(n_after: usize, after: impl Fn(usize) -> Option<f64>) -> String {
        accuracy_stream(3001 + n_after, |i| match i {
            0..3000 => Some(0.93 + noise(i)),
            3000 => Some(0.5),
            _ => after(i - 3001),
        })
    }

    fn simulate_lines(config: &Config, events: &str) -> (Summary, Vec<serde_json::Value>) {
        let mut out = Vec::new();
        let opts = Options {
            simulate: Some(Simulate { retrain_s: 0.0 }),
            ..Options::default()
        };
        let s = run(config, events.as_bytes(), &mut out, &opts).unwrap();
        let lines = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (s, lines)
    }

    fn verdicts(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l.get("probation").is_some())
            .collect()
    }

    fn f(v: &serde_json::Value) -> f64 {
        v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
    }

    /// First index of the candidate: the retrain ends at 3001, two values of warm-up.
    const FIRST_CANDIDATE: u64 = 3003;

    #[test]
    fn a_retrain_that_made_accuracy_worse_is_rolled_back_at_the_first_look() {
        let config = probation_config("", 0);
        let (s, lines) = simulate_lines(&config, &after_a_retrain(400, |k| Some(0.80 + noise(k))));
        let v = verdicts(&lines);
        assert_eq!(v.len(), 1, "{lines:?}");
        let v = v[0];
        assert_eq!(v["probation"], "rolled_back", "{v}");
        assert_eq!(v["cause"], "degraded", "{v}");
        assert_eq!(v["model_id"], "m");
        assert_eq!(v["policy"], "static_threshold");
        assert_eq!(v["metric"], "accuracy");
        assert_eq!(v["job"], 1, "{v}");
        // Early: at the first look, 20 candidate values.
        assert_eq!(v["candidate"]["n"], 20, "{v}");
        assert_eq!(v["index"], FIRST_CANDIDATE + 19, "{v}");
        assert!(f(&v["z"]) > f(&v["z_threshold"]), "{v}");
        // The baseline: the 200 values before the decision.
        assert_eq!(v["baseline"]["n"], 200, "{v}");
        assert!((f(&v["baseline"]["mean"]) - 0.93).abs() < 0.002, "{v}");
        assert!((f(&v["candidate"]["mean"]) - 0.80).abs() < 0.002, "{v}");
        assert!(f(&v["candidate"]["std"]) > 0.0, "{v}");
        assert_eq!(v.get("escalation"), None);
        // The job line, then the verdict, in input order.
        let idx: Vec<u64> = lines.iter().map(|l| l["index"].as_u64().unwrap()).collect();
        assert_eq!(idx, [3000, FIRST_CANDIDATE + 19], "{lines:?}");
        assert_eq!(
            s.rows[0].probation,
            Some(Verdicts {
                rolled_back: 1,
                ..Verdicts::default()
            })
        );
        let json = s.rows[0].to_json();
        assert_eq!(
            json["probation"],
            serde_json::json!({"promoted": 0, "rolled_back": 1, "inconclusive": 0}),
            "{json}"
        );
    }

    #[test]
    fn a_retrain_that_held_its_accuracy_is_promoted_at_exactly_events_values() {
        let config = probation_config("", 0);
        let (_, lines) = simulate_lines(&config, &after_a_retrain(400, |k| Some(0.95 + noise(k))));
        let v = verdicts(&lines);
        assert_eq!(v.len(), 1, "{lines:?}");
        let v = v[0];
        assert_eq!(v["probation"], "promoted", "{v}");
        assert_eq!(v["cause"], serde_json::Value::Null, "{v}");
        assert_eq!(v["candidate"]["n"], 200, "{v}");
        assert_eq!(v["index"], FIRST_CANDIDATE + 199, "{v}");
        assert!(f(&v["z"]) <= f(&v["z_threshold"]), "{v}");
    }

    /// With `fail_fast`, a policy firing during probation rolls the retrain back at once; the
    /// decision starts no retrain either way.
    #[test]
    fn fail_fast_rolls_back_when_a_policy_fires_during_probation() {
        let dip = |k: usize| Some(if k == 50 { 0.5 } else { 0.93 + noise(k) });
        let (s, lines) = simulate_lines(&probation_config("", 0), &after_a_retrain(400, dip));
        let v = verdicts(&lines);
        assert_eq!(v.len(), 1, "{lines:?}");
        assert_eq!(v[0]["probation"], "rolled_back", "{}", v[0]);
        assert_eq!(v[0]["cause"], "policy_fired", "{}", v[0]);
        assert_eq!(v[0]["index"], 3051, "{}", v[0]);
        // 49 candidate values (3003 to the dip's own): z is the current one, no boundary.
        assert_eq!(v[0]["candidate"]["n"], 49, "{}", v[0]);
        assert!(v[0]["z"].is_f64(), "{}", v[0]);
        assert_eq!(v[0]["z_threshold"], serde_json::Value::Null, "{}", v[0]);
        assert_eq!(lines.len(), 2, "one job, one verdict: {lines:?}");
        assert_eq!(s.rows[0].held, [("probation", 1)]);

        // Without fail_fast the decision is held and the probation goes on.
        let (s, lines) = simulate_lines(
            &probation_config("fail_fast = false", 0),
            &after_a_retrain(400, dip),
        );
        let v = verdicts(&lines);
        assert_eq!(v.len(), 1, "{lines:?}");
        assert_eq!(v[0]["probation"], "promoted", "{}", v[0]);
        assert_eq!(v[0]["index"], FIRST_CANDIDATE + 199, "{}", v[0]);
        assert_eq!(lines.len(), 2, "one job, one verdict: {lines:?}");
        assert_eq!(s.rows[0].held, [("probation", 1)]);
    }

    /// No accuracy after the retrain: at the first event past `max_wait_s` (100 s after the
    /// retrain ended at ts 30,000: event 3011) the verdict is inconclusive, and
    /// `on_inconclusive` says what follows. A rollback starts a cooldown (50 s): the drop at
    /// 3013, the first after the rollback's warm-up, is held by it, where after `keep` the
    /// retrain's cooldown is over and it starts a job.
    #[test]
    fn max_wait_s_makes_an_inconclusive_verdict_as_on_inconclusive_says() {
        let silent = |k: usize| (k == 12).then_some(0.5);
        for (on, outcome, cause, escalation, jobs) in [
            ("keep", "inconclusive", None, false, 2),
            ("rollback", "rolled_back", Some("inconclusive"), false, 1),
            ("escalate", "inconclusive", None, true, 2),
        ] {
            let config =
                probation_config(&format!("max_wait_s = 100\non_inconclusive = \"{on}\""), 50);
            let (s, lines) = simulate_lines(&config, &after_a_retrain(20, silent));
            let v = verdicts(&lines);
            assert_eq!(v.len(), 1, "{on}: {lines:?}");
            let v = v[0];
            assert_eq!(v["index"], 3011, "{on}: {v}");
            assert_eq!(v["probation"], outcome, "{on}: {v}");
            assert_eq!(v["cause"], serde_json::json!(cause), "{on}: {v}");
            assert_eq!(v["candidate"]["n"], 0, "{on}: {v}");
            assert_eq!(v["z"], serde_json::Value::Null, "{on}: {v}");
            assert_eq!(
                v.get("escalation"),
                escalation
                    .then(|| serde_json::json!({"cause": "inconclusive"}))
                    .as_ref(),
                "{on}: {v}"
            );
            assert_eq!(s.rows[0].jobs, Some(jobs), "{on}: {lines:?}");
            if jobs == 1 {
                assert_eq!(s.rows[0].held, [("cooldown", 1)], "{on}");
            }
        }
    }

    /// `baseline = "last_promoted"`: before any promotion the first 200 values of the model
    /// (0.94 here, against 0.93 just before the decision); then the promoted candidate.
    #[test]
    fn last_promoted_judges_against_the_first_values_then_the_last_promoted_candidate() {
        let config = probation_config("baseline = \"last_promoted\"", 0);
        let events = accuracy_stream(3800, |i| {
            Some(match i {
                0..200 => 0.94 + noise(i),
                200..3000 => 0.93 + noise(i),
                3000 | 3401 => 0.5,
                3001..3401 => 0.95 + noise(i),
                _ => 0.93 + noise(i),
            })
        });
        let (s, lines) = simulate_lines(&config, &events);
        let v = verdicts(&lines);
        assert_eq!(v.len(), 2, "{lines:?}");
        let first = Sample::of((0..200).map(|i| 0.94 + noise(i)));
        assert_eq!(v[0]["probation"], "promoted", "{}", v[0]);
        assert_eq!(v[0]["baseline"]["n"], 200);
        assert!(
            (f(&v[0]["baseline"]["mean"]) - first.mean).abs() < 1e-12,
            "{}",
            v[0]
        );
        assert_eq!(v[1]["probation"], "rolled_back", "{}", v[1]);
        assert_eq!(v[1]["cause"], "degraded", "{}", v[1]);
        assert_eq!(v[1]["job"], 2, "{}", v[1]);
        assert_eq!(v[1]["baseline"], v[0]["candidate"], "{}", v[1]);
        assert_eq!(
            s.rows[0].probation,
            Some(Verdicts {
                promoted: 1,
                rolled_back: 1,
                inconclusive: 0
            })
        );
    }

    /// A rollback is done at once and resets the policies with warm-up, as a retrain does:
    /// a drop at the rollback's next event (its warm-up's first) decides nothing, a later one
    /// starts the next retrain, which the rollback's cooldown (0 s here) does not hold.
    #[test]
    fn a_rollback_resets_the_policies_with_warm_up() {
        let after = |k: usize| {
            Some(if k == 22 || k == 40 {
                0.5
            } else {
                0.80 + noise(k)
            })
        };
        let (s, lines) = simulate_lines(&probation_config("", 0), &after_a_retrain(60, after));
        let brief: Vec<(u64, Option<&str>)> = lines
            .iter()
            .map(|l| (l["index"].as_u64().unwrap(), l["probation"].as_str()))
            .collect();
        assert_eq!(
            brief,
            [
                (3000, None),
                (FIRST_CANDIDATE + 19, Some("rolled_back")),
                (3041, None)
            ],
            "{lines:?}"
        );
        assert_eq!(s.rows[0].signals, 2, "the warm-up's drop is no decision");
        assert!(s.rows[0].held.is_empty(), "{:?}", s.rows[0].held);
    }

    /// A baseline of fewer than two values judges nothing: the retrain is kept, no line.
    #[test]
    fn a_retrain_without_a_baseline_goes_unjudged() {
        let config = probation_config("", 0);
        let events = accuracy_stream(300, |i| Some(if i == 1 { 0.5 } else { 0.8 }));
        let (_, lines) = simulate_lines(&config, &events);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["action"], "fine_tune");
    }
}
