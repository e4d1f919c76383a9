//! One supervised actor per model: it wraps the model's policy state, applies batches of
//! events, turns policy signals into decisions for the command actor, and persists its state.
//!
//! Supervision: actix's `Supervisor` restarts an actor only when its context stops, never on a
//! panic. So policy code runs under `catch_unwind`, and any failure (an error or a panic) becomes
//! an explicit `ctx.stop()`; `restarting()` then reloads the state from the store. Events applied
//! since the last write are lost with the failed state, so the next barrier reports an error
//! instead of a false "durable".
//!
//! Idle models: `model_idle_unload_s` after its last batch a model with nothing left to write
//! drops its state from memory (the store has it); the next batch or reset loads it again, and
//! a view reads it from the store without keeping it.
//!
//! Persistence is a log plus checkpoints (see `store`): after a batch is applied, its events go
//! to the store's observation log (a memcpy into the next frame; the store's flusher writes it
//! for every model at once each flush interval), and once a model's log outgrows its last
//! checkpoint the model writes a new one. Loading replays the logged events through the same
//! code that applied them ([`advance`]), without sending decisions again. An operator's reset,
//! a changed rule and unloading write a checkpoint at once, so a replay never crosses them.
//! No model keeps a timer for persistence.

pub mod decide;
pub mod messages;
pub mod registry;
mod verdicts;
mod view;

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;

use crate::command::input::HookEvent;
use crate::command::messages::{Decision, ProbationVerdict};
use crate::config::ModelRule;
use crate::policy::detect::Signal;
use crate::policy::{Action, Obs, PolicySpec, PolicyState, Reason, bind_states};
use crate::probation;
use crate::store::{DecisionRecord, ModelRecord, Store, StoreError};

pub use decide::{Decider, Note};
pub use messages::*;
pub use view::{DecisionCount, DecisionView, ModelView, PolicyView};

/// How many recent values the sparklines keep.
const RECENT: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot persist the model's state")]
    Store(#[from] StoreError),
    #[error(
        "the model's actor failed and was restarted from its last persisted state; events since then were lost"
    )]
    Restarted,
    #[error("injected fault")]
    Injected,
}

pub struct ModelActor {
    id: Arc<str>,
    rule: Option<Arc<ModelRule>>,
    record: ModelRecord,
    store: Store,
    commander: Recipient<Decision>,
    /// Where probation verdicts go (the command actor).
    verdicts: Recipient<ProbationVerdict>,
    /// The probation whose `max_wait_s` timer is armed.
    max_wait_armed: Option<u64>,
    flush_interval: Duration,
    /// Size of the last checkpoint (what the next fold will write).
    checkpoint_bytes: u64,
    /// Events were applied that the log did not take (the store was failing): only a
    /// checkpoint can cover them, and no barrier may succeed before one did.
    unlogged: bool,
    restarts: u64,
    /// Decision counts and which policies are firing, since the daemon started.
    decider: Decider,
    /// Bumped at every restart. A connection notes it when it starts sending to this model
    /// and refuses to claim durability at its barrier if it moved: its events may have died
    /// with the failed state.
    epoch: Arc<AtomicU64>,
    /// Tests only: events whose meta asks for a fault get one.
    fault_injection: bool,
    /// The state is in memory (`record` is the model's); false once unloaded after being
    /// idle for `idle_unload`, until the next message that needs it.
    loaded: bool,
    /// The state left memory after being idle (for the log line when it comes back).
    unloaded_idle: bool,
    /// Drop the in-memory state after this long without events (`None`: never).
    idle_unload: Option<Duration>,
    /// When the last batch was applied.
    last_active: std::time::Instant,
    /// An idle check is scheduled.
    unload_scheduled: bool,
}

pub struct ModelSetup {
    pub id: Arc<str>,
    pub rule: Option<Arc<ModelRule>>,
    pub store: Store,
    pub commander: Recipient<Decision>,
    pub verdicts: Recipient<ProbationVerdict>,
    pub flush_interval: Duration,
    pub fault_injection: bool,
    pub epoch: Arc<AtomicU64>,
    pub idle_unload: Option<Duration>,
}

impl ModelActor {
    /// Builds the actor; its persisted state is loaded when it starts (on the models'
    /// thread, never on a connection's).
    pub fn new(setup: ModelSetup) -> ModelActor {
        ModelActor {
            id: setup.id,
            rule: setup.rule,
            record: ModelRecord::default(),
            store: setup.store,
            commander: setup.commander,
            verdicts: setup.verdicts,
            max_wait_armed: None,
            flush_interval: setup.flush_interval,
            checkpoint_bytes: 0,
            unlogged: false,
            restarts: 0,
            decider: Decider::default(),
            epoch: setup.epoch,
            fault_injection: setup.fault_injection,
            loaded: false,
            unloaded_idle: false,
            idle_unload: setup.idle_unload,
            last_active: std::time::Instant::now(),
            unload_scheduled: false,
        }
    }

    /// The persisted state: the checkpoint with the logged events replayed on top.
    fn load_state(&self) -> Result<(ModelRecord, u64, bool), StoreError> {
        let loaded = self.store.load_model_state(&self.id)?;
        if loaded.gap {
            let checkpoint_events = loaded.record.as_ref().map_or(0, |r| r.events);
            tracing::error!(model_id = %self.id, checkpoint_events, "the model's logged events do not follow on from its checkpoint; replaying what the log has");
        }
        let fold = loaded.recovered || loaded.gap;
        let bytes = loaded.checkpoint_bytes;
        Ok((replay(loaded, self.rule.as_deref()), bytes, fold))
    }

    /// Replaces the in-memory state with the persisted one; events logged in an earlier run
    /// are folded into a checkpoint at once, so their segments can go.
    fn reload(&mut self) -> Result<(), StoreError> {
        let (record, checkpoint_bytes, fold) = self.load_state()?;
        self.record = record;
        self.checkpoint_bytes = checkpoint_bytes;
        self.unlogged = false;
        self.loaded = true;
        if fold {
            self.fold()?;
        }
        Ok(())
    }

    /// Loads the state again if it was unloaded while idle.
    fn ensure_loaded(&mut self) -> Result<(), StoreError> {
        if !self.loaded {
            self.reload()?;
            if self.unloaded_idle {
                tracing::debug!(model_id = %self.id, "model state loaded again after being idle");
            } else {
                tracing::debug!(model_id = %self.id, "model state loaded");
            }
            self.unloaded_idle = false;
        }
        Ok(())
    }

    /// Writes the whole state as the model's checkpoint (its log is then no longer needed).
    fn fold(&mut self) -> Result<(), StoreError> {
        self.checkpoint_bytes = self.store.checkpoint(&self.id, &self.record)?;
        self.unlogged = false;
        Ok(())
    }

    /// Checks, `idle_unload` after the last batch, whether the model stayed idle; if so its
    /// state (windows, detectors, sparklines) is folded into a checkpoint and leaves memory;
    /// the next event loads it again. A model whose fold fails stays (checked again every
    /// flush interval, so a failing disk is not polled in a loop).
    fn schedule_unload_check(&mut self, ctx: &mut Context<Self>) {
        let Some(idle) = self.idle_unload else { return };
        if self.unload_scheduled {
            return;
        }
        self.unload_scheduled = true;
        let due = (self.last_active + idle)
            .saturating_duration_since(std::time::Instant::now())
            .max(self.flush_interval);
        ctx.run_later(due, move |act, ctx| {
            act.unload_scheduled = false;
            if !act.loaded {
                return;
            }
            if act.last_active.elapsed() < idle {
                act.schedule_unload_check(ctx);
                return;
            }
            if (act.unlogged || act.store.has_tail(&act.id))
                && let Err(error) = act.fold()
            {
                log_write_failure(&act.id, &error);
                act.schedule_unload_check(ctx);
                return;
            }
            act.record = ModelRecord::default();
            act.loaded = false;
            act.unloaded_idle = true;
            // The allocator's background thread hands the freed pages back to the system.
            tracing::debug!(model_id = %act.id, idle_s = idle.as_secs(), "idle model's state unloaded from memory");
        });
    }

    fn apply(&mut self, batch: &[Obs]) -> Result<(), ModelError> {
        if self.fault_injection {
            for obs in batch {
                inject_fault(obs)?;
            }
        }
        let first_seq = self.record.events + 1;
        let rule = self.rule.clone();
        // A probation the rule no longer has (a reload dropped it while the state was out
        // of memory) holds nothing.
        let on_probation = self.probation_spec().is_some() && self.record.probation.on_probation();
        let (out, notes) = self.decider.apply(&mut self.record, rule.as_deref(), batch);
        let id = &self.id;
        for note in notes {
            match note {
                Note::Warning { spec, reason } => {
                    tracing::debug!(model_id = %id, policy = %spec.name, reason = %reason, "warning")
                }
                Note::Drift {
                    spec,
                    action,
                    reason,
                } => {
                    tracing::info!(model_id = %id, policy = %spec.name, action = %action, reason = %reason, "decision")
                }
                Note::Started {
                    spec,
                    action,
                    reason,
                } => {
                    tracing::info!(model_id = %id, policy = %spec.name, action = %action, reason = %reason, "policy started firing")
                }
                Note::Again {
                    spec,
                    action,
                    reason,
                } => {
                    tracing::debug!(model_id = %id, policy = %spec.name, action = %action, reason = %reason, "decision")
                }
                Note::Stopped { spec, events } => {
                    tracing::info!(model_id = %id, policy = %spec.name, events, "policy stopped firing")
                }
            }
        }
        let loop_window_s = rule.as_deref().map_or(0, |r| r.loop_window_s);
        if on_probation && !out.is_empty() {
            // During probation, policy decisions start no retrain (with `fail_fast`, the
            // first one ended the probation instead).
            tracing::debug!(model_id = %id, decisions = out.len(), "decisions during probation start no retrain");
        }
        let baseline = if on_probation || out.is_empty() {
            None
        } else {
            self.decision_baseline()
        };
        for d in out.into_iter().filter(|_| !on_probation) {
            self.commander.do_send(Decision {
                model_id: id.clone(),
                policy: d.spec.name.clone(),
                action: d.action,
                reason: d.reason,
                event: HookEvent::new(id, d.obs).raw(),
                at: d.obs.ts,
                manual: false,
                loop_window_s,
                statistic: d.compared.0,
                threshold: d.compared.1,
                warmup: d.warmup,
                baseline,
            });
        }
        if on_probation && !self.record.probation.on_probation() {
            self.report_verdict(true);
        }
        self.log(first_seq, batch);
        Ok(())
    }

    /// Hands applied events to the store's log, folding when the log outgrew the checkpoint.
    fn log(&mut self, first_seq: u64, batch: &[Obs]) {
        if self.unlogged {
            // The log is missing earlier events: only a checkpoint can follow on.
            if let Err(error) = self.fold() {
                log_write_failure(&self.id, &error);
            }
            return;
        }
        match self
            .store
            .append(&self.id, first_seq, batch, self.checkpoint_bytes)
        {
            Ok(false) => {}
            Ok(true) => {
                if let Err(error) = self.fold() {
                    // The log has the events; the next append asks again.
                    log_write_failure(&self.id, &error);
                }
            }
            Err(error) => {
                self.unlogged = true;
                log_write_failure(&self.id, &error);
            }
        }
    }

    /// Starts every policy afresh, with the rule's warm-up if `warmup` (the caller persists).
    fn reset_policies(&mut self, warmup: bool) {
        let specs = self.rule.as_ref().map(|r| &r.policies[..]).unwrap_or(&[]);
        self.record.policies = specs.iter().map(PolicyState::new).collect();
        self.decider.stop_firing();
        self.record.warmup_left = if warmup {
            self.rule.as_ref().map(|r| r.warmup_events).unwrap_or(0)
        } else {
            0
        };
    }

    fn view(&self) -> ModelView {
        if self.loaded {
            return self.view_of(&self.record, &self.record.policies);
        }
        // Read through, without keeping it: views (`models`, metrics) must not load every
        // idle model back into memory.
        let record = match self.load_state() {
            Ok((rec, _, _)) => rec,
            Err(error) => {
                tracing::error!(model_id = %self.id, error = %error, "cannot read an unloaded model's state for its view");
                ModelRecord::default()
            }
        };
        self.view_of(&record, &record.policies)
    }

    fn view_of(&self, record: &ModelRecord, states: &[PolicyState]) -> ModelView {
        let mut v = ModelView::from_record(&self.id, record, None);
        v.restarts = self.restarts;
        v.decision_counts = self.decider.counts.clone();
        v.probation = self.probation_view(record);
        if let Some(rule) = &self.rule {
            v.policies = rule
                .policies
                .iter()
                .zip(states)
                .map(|(spec, st)| PolicyView::new(spec, st))
                .collect();
        }
        v
    }
}

/// What one event made a policy conclude, for the caller of [`advance`] to act on.
pub struct Fired<'a> {
    pub spec: &'a PolicySpec,
    /// `None` for a warning (it informs, it does not act).
    pub action: Option<Action>,
    pub reason: Reason<'a>,
    pub obs: &'a Obs,
    /// A drift during the model's warm-up: it decides nothing (it is neither counted nor the
    /// model's last decision), and is reported so that `explain` can say why no job ran.
    pub warmup: bool,
    /// The statistic and threshold the drift compared ([`crate::policy::compared`]); `None` for a
    /// warning.
    pub compared: (Option<f64>, Option<f64>),
}

/// Applies events to a model's state: counters, sparklines, policies, warm-up and the record of
/// the last decision. The daemon's actors and the replay at load share it, so a replayed state
/// is exactly the state that was applied; only the actors act on what fired.
/// A stored model's state as loading it makes it: its checkpoint, bound to `rule`'s
/// policies, with the logged events replayed on top through [`advance`].
pub fn replay(loaded: crate::store::LoadedModel, rule: Option<&ModelRule>) -> ModelRecord {
    let mut record = loaded.record.unwrap_or_default();
    let specs = rule.map(|r| &r.policies[..]).unwrap_or(&[]);
    record.policies = bind_states(specs, std::mem::take(&mut record.policies));
    if !loaded.events.is_empty() {
        advance(&mut record, rule, &loaded.events, |_| {});
    }
    record
}

pub fn advance<'a>(
    record: &mut ModelRecord,
    rule: Option<&'a ModelRule>,
    batch: &'a [Obs],
    mut on_fire: impl FnMut(Fired<'a>),
) {
    let Some(rule) = rule else {
        for obs in batch {
            count(record, obs);
        }
        return;
    };
    // The batch's last decision, recorded once at its end: a policy over its threshold fires
    // on every event, and only the last one is ever seen.
    let mut last = None;
    for obs in batch {
        count(record, obs);
        for (spec, state) in rule.policies.iter().zip(record.policies.iter_mut()) {
            let Some(fire) = state.observe(spec, obs) else {
                continue;
            };
            let Some(action) = fire.action.filter(|_| fire.signal == Signal::Drift) else {
                on_fire(Fired {
                    spec,
                    action: None,
                    reason: fire.reason,
                    obs,
                    warmup: false,
                    compared: (None, None),
                });
                continue;
            };
            let warmup = record.warmup_left > 0;
            if !warmup {
                record.decisions += 1;
                last = Some((obs.ts, spec, action, fire.reason));
                // `fail_fast`: a policy firing during probation rolls the retrain back.
                if let Some(ps) = rule.probation.as_ref().filter(|p| p.fail_fast)
                    && let Some(p) = record.probation.current.as_mut()
                {
                    p.end(
                        &ps.rule,
                        probation::State::RolledBack,
                        Some(probation::Cause::PolicyFired),
                        seen_at(obs),
                    );
                }
            }
            on_fire(Fired {
                spec,
                action: Some(action),
                reason: fire.reason,
                obs,
                warmup,
                compared: crate::policy::compared(
                    spec,
                    Some(&fire.reason),
                    || state.state(spec),
                    obs,
                ),
            });
        }
        if let Some(ps) = &rule.probation
            && let Some(v) = obs.metric(&ps.metric)
        {
            record.probation.observe(&ps.rule, v, seen_at(obs));
        }
        record.warmup_left = record.warmup_left.saturating_sub(1);
    }
    if let Some((at, spec, action, reason)) = last {
        record.last_decision = Some(DecisionRecord {
            at,
            policy: spec.name.clone(),
            action,
            reason: reason.to_string(),
        });
    }
}

/// When the daemon received the event (its own `ts` when that is unknown).
fn seen_at(obs: &Obs) -> f64 {
    if obs.received > 0.0 {
        obs.received
    } else {
        obs.ts
    }
}

fn count(r: &mut ModelRecord, obs: &Obs) {
    if r.events == 0 {
        r.first_seen = obs.ts;
    }
    r.events += 1;
    // The time of receipt, not the event's own `ts` (an old `ts` must not make the model look
    // silent for years); never earlier than before (a wall clock set back must not make a
    // model look silent either).
    r.last_seen = r.last_seen.max(seen_at(obs));
    push_recent(&mut r.recent_drift, obs.drift_score);
    push_recent(&mut r.recent_accuracy, obs.accuracy);
}

/// Logs a failed state write, at most once per `WRITE_ERROR_LOG_EVERY` over all models: on a
/// failing disk every dirty model retries every interval, and one line per retry would bury
/// the journal (the store logs the disk error itself, and `status` shows it).
fn log_write_failure(model_id: &str, error: &StoreError) {
    use std::sync::atomic::AtomicU64;
    static LAST: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = clock_epoch().elapsed().as_secs() + WRITE_ERROR_LOG_EVERY;
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + WRITE_ERROR_LOG_EVERY
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
        tracing::error!(model_id, error = %error, suppressed, "cannot persist model state; will retry");
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Seconds between two logged state-write failures.
const WRITE_ERROR_LOG_EVERY: u64 = 10;

/// A process-wide origin for the write slots.
fn clock_epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

fn push_recent(q: &mut VecDeque<f32>, v: Option<f64>) {
    if let Some(v) = v {
        if q.len() >= RECENT {
            q.pop_front();
        }
        q.push_back(v as f32);
    }
}

/// The event as the hook sees it on stdin.
/// Test seam: `{"meta": {"fault": "panic"}}` panics inside policy code, `"error"` fails,
/// `"hang"` blocks the model thread for a while.
fn inject_fault(obs: &Obs) -> Result<(), ModelError> {
    let Some(meta) = &obs.meta else { return Ok(()) };
    if !meta.contains("fault") {
        return Ok(());
    }
    match serde_json::from_str::<serde_json::Value>(meta)
        .ok()
        .and_then(|v| v.get("fault").and_then(|f| f.as_str().map(str::to_owned)))
        .as_deref()
    {
        Some("panic") => panic!("injected panic in policy code"),
        Some("error") => Err(ModelError::Injected),
        Some("hang") => {
            // A wedged actor: the watchdog heartbeat must stop going through.
            tracing::warn!("injected hang: blocking the model thread for 4 s");
            std::thread::sleep(Duration::from_secs(4));
            Ok(())
        }
        _ => Ok(()),
    }
}

impl Actor for ModelActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.rule.is_none() {
            warn_no_rule(&self.id);
        }
        if let Err(error) = self.ensure_loaded() {
            // Handlers try again (ApplyBatch restarts the actor on a failed load).
            tracing::error!(model_id = %self.id, error = %error, "cannot load the model's state");
        }
        self.after_load(ctx);
        self.schedule_unload_check(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        // One synchronous chance at shutdown: events the log did not take need a checkpoint;
        // everything else is in the log already, and the daemon flushes after.
        if self.unlogged
            && let Err(error) = self.fold()
        {
            tracing::error!(model_id = %self.id, error = %error, "cannot persist model state at stop");
        }
    }
}

/// Once per model (at its start, or when a reload leaves it without a rule): events of an id
/// that no `[[models]]` rule matches are counted and nothing watches them, which is easy to
/// miss (a typo in a pattern).
fn warn_no_rule(id: &str) {
    tracing::warn!(
        model_id = %id,
        "no [[models]] rule matches this model id: its events are counted and no policy watches them"
    );
}

impl Supervised for ModelActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.restarts += 1;
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.unload_scheduled = false;
        self.max_wait_armed = None;
        self.loaded = false;
        match self.reload() {
            Ok(()) => {
                tracing::warn!(model_id = %self.id, restarts = self.restarts, events = self.record.events, "model actor restarted from its persisted state")
            }
            Err(error) => {
                tracing::error!(model_id = %self.id, error = %error, "model actor restarted but its state could not be reloaded; loading it again at its next message")
            }
        }
    }
}

impl Handler<ApplyBatch> for ModelActor {
    type Result = ();

    fn handle(&mut self, msg: ApplyBatch, ctx: &mut Context<Self>) {
        if let Err(error) = self.ensure_loaded() {
            // Its events cannot be applied: fail like any other error, so that barriers do
            // not claim them (the restart bumps the epoch) and the restart tries the load again.
            tracing::error!(model_id = %self.id, error = %error, "cannot load the model's state; restarting its actor");
            ctx.stop();
            return;
        }
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| self.apply(msg.obs())));
        let error = match result {
            Ok(Ok(())) => {
                self.last_active = std::time::Instant::now();
                self.schedule_unload_check(ctx);
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(panic) => panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into()),
        };
        tracing::error!(model_id = %self.id, error = %error, "model actor failed; restarting it from its persisted state");
        // The supervisor restarts a stopped actor; restarting() reloads the state.
        ctx.stop();
    }
}

impl Handler<Barrier> for ModelActor {
    type Result = Result<(), ModelError>;

    fn handle(&mut self, _msg: Barrier, _ctx: &mut Context<Self>) -> Self::Result {
        // Every applied event is in the log already (the caller flushes it), unless the log
        // refused some: then only a checkpoint can cover them.
        if self.unlogged {
            self.fold()?;
        }
        Ok(())
    }
}

impl Handler<Snapshot> for ModelActor {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.view())
    }
}

impl Handler<Reconfigure> for ModelActor {
    type Result = ();

    fn handle(&mut self, msg: Reconfigure, _ctx: &mut Context<Self>) {
        let changed = self.rule.as_deref() != msg.0.as_deref();
        let old = std::mem::replace(&mut self.rule, msg.0);
        if !self.loaded {
            // The persisted states are bound to the new policies when they are loaded; a
            // probation the new rule drops ends now, so the state is loaded for it.
            if old.as_ref().is_some_and(|r| r.probation.is_some())
                && self.probation_spec().is_none()
            {
                match self.ensure_loaded() {
                    Ok(()) => self.probation_dropped(old.as_deref()),
                    Err(error) => {
                        tracing::error!(model_id = %self.id, error = %error, "cannot load the model's state to end its probation")
                    }
                }
            }
            return;
        }
        if !changed {
            return;
        }
        self.decider.stop_firing();
        if self.rule.is_none() {
            warn_no_rule(&self.id);
        }
        let old_specs = old.as_ref().map(|r| &r.policies[..]).unwrap_or(&[]);
        let specs = self.rule.as_ref().map(|r| &r.policies[..]).unwrap_or(&[]);
        self.record.policies = crate::policy::rebind_states(
            old_specs,
            specs,
            std::mem::take(&mut self.record.policies),
        );
        self.probation_dropped(old.as_deref());
        // A checkpoint now, so no replay applies events logged under the old rule with the
        // new one.
        if let Err(error) = self.fold() {
            self.unlogged = true;
            log_write_failure(&self.id, &error);
        }
    }
}

impl Handler<Forget> for ModelActor {
    type Result = Result<(), ModelError>;

    fn handle(&mut self, _msg: Forget, _ctx: &mut Context<Self>) -> Self::Result {
        self.store.forget_model(&self.id)?;
        let specs = self.rule.as_ref().map(|r| &r.policies[..]).unwrap_or(&[]);
        self.record = ModelRecord {
            policies: specs.iter().map(PolicyState::new).collect(),
            ..ModelRecord::default()
        };
        self.loaded = true;
        self.unlogged = false;
        self.checkpoint_bytes = 0;
        self.decider = Decider::default();
        tracing::info!(model_id = %self.id, "model forgotten: its state, counters and stored records are gone (its jobs stay in the journal)");
        Ok(())
    }
}

impl Handler<ResetPolicies> for ModelActor {
    type Result = Result<(), ModelError>;

    fn handle(&mut self, msg: ResetPolicies, ctx: &mut Context<Self>) -> Self::Result {
        match self.ensure_loaded() {
            Ok(()) => {}
            // A stored state that does not decode is what this reset replaces: it starts from
            // nothing (the counters cannot be carried over), without reading it.
            Err(error) if error.is_undecodable() => {
                self.store.discard_model_state(&self.id)?;
                tracing::warn!(model_id = %self.id, error = %error, "the model's stored state does not decode; the reset starts it afresh");
                self.record = ModelRecord::default();
                self.loaded = true;
            }
            Err(error) => return Err(error.into()),
        }
        self.schedule_unload_check(ctx);
        self.reset_policies(msg.warmup);
        if let Err(error) = self.fold() {
            self.unlogged = true;
            return Err(error.into());
        }
        tracing::info!(model_id = %self.id, warmup = self.record.warmup_left, "policies reset");
        Ok(())
    }
}

impl Handler<Ping> for ModelActor {
    type Result = ();

    fn handle(&mut self, _msg: Ping, _ctx: &mut Context<Self>) {}
}
