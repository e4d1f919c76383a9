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
//! Persistence is coalesced: a batch marks the state dirty and schedules one write, at the
//! model's own slot within the next `flush_interval` (slots are spread by model id, so a
//! thousand models that woke together do not all write in the same millisecond and hold up
//! the events behind them); a barrier writes at once. Durability (fsync) is the store's flush.

pub mod messages;
pub mod registry;

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use crate::command::CommandActor;
use crate::command::messages::Decision;
use crate::config::ModelRule;
use crate::policy::detect::Signal;
use crate::policy::{Obs, PolicyState, bind_states};
use crate::store::{DecisionRecord, ModelRecord, Store, StoreError};

pub use messages::*;

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

/// What the control socket shows of a model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelView {
    pub model_id: String,
    pub events: u64,
    pub last_seen: f64,
    pub first_seen: f64,
    pub decisions: u64,
    pub last_decision: Option<DecisionView>,
    pub restarts: u64,
    pub warmup_left: u64,
    pub policies: Vec<PolicyView>,
    pub recent_drift: Vec<f32>,
    pub recent_accuracy: Vec<f32>,
    /// Decisions since the daemon started, per policy and action (for `metrics`); empty for
    /// a model not loaded in this run.
    pub decision_counts: Vec<DecisionCount>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionCount {
    pub policy: String,
    pub action: &'static str,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecisionView {
    pub at: f64,
    pub policy: String,
    pub action: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyView {
    pub name: String,
    pub kind: String,
    pub state: String,
}

impl ModelView {
    /// The view of a persisted record (a model not loaded in this run).
    pub fn from_record(model_id: &str, rec: &ModelRecord, rule: Option<&ModelRule>) -> ModelView {
        let policies = match rule {
            Some(rule) => rule
                .policies
                .iter()
                .zip(bind_states(&rule.policies, rec.policies.clone()))
                .map(|(spec, st)| PolicyView {
                    name: spec.name.clone(),
                    kind: spec.kind.kind_name().into(),
                    state: st.summary(spec),
                })
                .collect(),
            None => Vec::new(),
        };
        ModelView {
            model_id: model_id.to_owned(),
            events: rec.events,
            last_seen: rec.last_seen,
            first_seen: rec.first_seen,
            decisions: rec.decisions,
            last_decision: rec.last_decision.as_ref().map(|d| DecisionView {
                at: d.at,
                policy: d.policy.clone(),
                action: d.action.as_str().into(),
                reason: d.reason.clone(),
            }),
            restarts: 0,
            warmup_left: rec.warmup_left,
            policies,
            recent_drift: rec.recent_drift.iter().copied().collect(),
            recent_accuracy: rec.recent_accuracy.iter().copied().collect(),
            decision_counts: Vec::new(),
        }
    }
}

pub struct ModelActor {
    id: Arc<str>,
    rule: Option<Arc<ModelRule>>,
    record: ModelRecord,
    store: Store,
    commander: Addr<CommandActor>,
    flush_interval: Duration,
    /// The state changed since it was last written.
    dirty: bool,
    /// A delayed write is already scheduled.
    write_scheduled: bool,
    /// This model's write slot within each flush interval, in nanoseconds.
    write_phase: u64,
    restarts: u64,
    /// Per policy and action, since the daemon started: a handful of entries per model.
    decision_counts: Vec<DecisionCount>,
    /// Bumped at every restart. A connection notes it when it starts sending to this model
    /// and refuses to claim durability at its barrier if it moved: its events may have died
    /// with the failed state.
    epoch: Arc<AtomicU64>,
    /// Tests only: events whose meta asks for a fault get one.
    fault_injection: bool,
    /// The state is in memory (`record` is the model's); false once unloaded after being
    /// idle for `idle_unload`, until the next message that needs it.
    loaded: bool,
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
    pub commander: Addr<CommandActor>,
    pub flush_interval: Duration,
    pub fault_injection: bool,
    pub epoch: Arc<AtomicU64>,
    pub idle_unload: Option<Duration>,
}

impl ModelActor {
    /// Builds the actor with its persisted state (or a fresh one).
    pub fn new(setup: ModelSetup) -> Result<ModelActor, StoreError> {
        let write_phase = {
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&*setup.id, &mut h);
            std::hash::Hasher::finish(&h)
        };
        let mut actor = ModelActor {
            id: setup.id,
            rule: setup.rule,
            record: ModelRecord::default(),
            store: setup.store,
            commander: setup.commander,
            flush_interval: setup.flush_interval,
            dirty: false,
            write_scheduled: false,
            write_phase,
            restarts: 0,
            decision_counts: Vec::new(),
            epoch: setup.epoch,
            fault_injection: setup.fault_injection,
            loaded: false,
            idle_unload: setup.idle_unload,
            last_active: std::time::Instant::now(),
            unload_scheduled: false,
        };
        actor.reload()?;
        Ok(actor)
    }

    /// Replaces the in-memory state with the persisted one.
    fn reload(&mut self) -> Result<(), StoreError> {
        let mut record = self.store.load_model(&self.id)?.unwrap_or_default();
        let specs = self.rule.as_ref().map(|r| &r.policies[..]).unwrap_or(&[]);
        record.policies = bind_states(specs, std::mem::take(&mut record.policies));
        self.record = record;
        self.dirty = false;
        self.loaded = true;
        Ok(())
    }

    /// Loads the state again if it was unloaded while idle.
    fn ensure_loaded(&mut self) -> Result<(), StoreError> {
        if !self.loaded {
            self.reload()?;
            tracing::debug!(model_id = %self.id, "model state loaded again after being idle");
        }
        Ok(())
    }

    /// Checks, `idle_unload` after the last batch, whether the model stayed idle; if so its
    /// state (windows, detectors, sparklines) leaves memory: it is in the store already, and
    /// the next event loads it again. A model with unwritten changes stays until they are
    /// written (checked again every flush interval, so a failing disk is not polled in a loop).
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
            if act.last_active.elapsed() < idle || act.dirty {
                // Active since, or a write still due: look again later.
                act.schedule_unload_check(ctx);
                return;
            }
            act.record = ModelRecord::default();
            act.loaded = false;
            // The allocator's background thread hands the freed pages back to the system.
            tracing::debug!(model_id = %act.id, idle_s = idle.as_secs(), "idle model's state unloaded from memory");
        });
    }

    fn apply(&mut self, batch: &[Obs]) -> Result<(), ModelError> {
        let Some(rule) = self.rule.clone() else {
            for obs in batch {
                self.count(obs);
            }
            return Ok(());
        };
        // At most one decision per action per batch goes to the command actor: a flapping
        // metric must not flood it; every fire is still counted.
        let mut sent = [false; 3];
        // The batch's last decision, recorded once at its end: a policy over its threshold
        // fires on every event, and only the last one is ever seen.
        let mut last = None;
        for obs in batch {
            if self.fault_injection {
                inject_fault(obs)?;
            }
            self.count(obs);
            for (spec, state) in rule.policies.iter().zip(self.record.policies.iter_mut()) {
                let Some(fire) = state.observe(spec, obs, obs.ts) else {
                    continue;
                };
                let Some(action) = fire.action.filter(|_| fire.signal == Signal::Drift) else {
                    tracing::debug!(model_id = %self.id, policy = %spec.name, reason = %fire.reason, "warning");
                    continue;
                };
                if self.record.warmup_left > 0 {
                    continue;
                }
                self.record.decisions += 1;
                match self
                    .decision_counts
                    .iter_mut()
                    .find(|c| c.policy == spec.name && c.action == action.as_str())
                {
                    Some(c) => c.count += 1,
                    None => self.decision_counts.push(DecisionCount {
                        policy: spec.name.clone(),
                        action: action.as_str(),
                        count: 1,
                    }),
                }
                last = Some((obs.ts, spec, action, fire.reason));
                let slot = action as usize;
                if !sent[slot] {
                    sent[slot] = true;
                    tracing::info!(model_id = %self.id, policy = %spec.name, action = %action, reason = %fire.reason, "decision");
                    self.commander.do_send(Decision {
                        model_id: self.id.clone(),
                        policy: spec.name.clone(),
                        action,
                        reason: fire.reason.to_string(),
                        event: obs_json(&self.id, obs),
                        at: obs.ts,
                        manual: false,
                    });
                }
            }
            self.record.warmup_left = self.record.warmup_left.saturating_sub(1);
        }
        if let Some((at, spec, action, reason)) = last {
            self.record.last_decision = Some(DecisionRecord {
                at,
                policy: spec.name.clone(),
                action,
                reason: reason.to_string(),
            });
        }
        Ok(())
    }

    fn count(&mut self, obs: &Obs) {
        let r = &mut self.record;
        if r.events == 0 {
            r.first_seen = obs.ts;
        }
        r.events += 1;
        r.last_seen = obs.ts;
        push_recent(&mut r.recent_drift, obs.drift_score);
        push_recent(&mut r.recent_accuracy, obs.accuracy);
    }

    fn write(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            self.store.save_model(&self.id, &self.record)?;
            self.dirty = false;
        }
        Ok(())
    }

    fn schedule_write(&mut self, ctx: &mut Context<Self>) {
        if self.write_scheduled {
            return;
        }
        self.write_scheduled = true;
        // The next time this model's slot comes round: within one interval, so dirty state
        // is never older than `flush_interval` on disk, and an active model still writes
        // once per interval.
        let interval = (self.flush_interval.as_nanos() as u64).max(1);
        let now = clock_epoch().elapsed().as_nanos() as u64;
        let delay = interval - now.wrapping_add(self.write_phase) % interval;
        ctx.run_later(Duration::from_nanos(delay), |act, ctx| {
            act.write_scheduled = false;
            if let Err(error) = act.write() {
                log_write_failure(&act.id, &error);
                act.schedule_write(ctx);
            }
        });
    }

    fn view(&self) -> ModelView {
        if self.loaded {
            return self.view_of(&self.record, &self.record.policies);
        }
        // Read through, without keeping it: views (`models`, metrics) must not load every
        // idle model back into memory.
        let record = match self.store.load_model(&self.id) {
            Ok(rec) => rec.unwrap_or_default(),
            Err(error) => {
                tracing::error!(model_id = %self.id, error = %error, "cannot read an unloaded model's state for its view");
                ModelRecord::default()
            }
        };
        let specs = self.rule.as_ref().map(|r| &r.policies[..]).unwrap_or(&[]);
        let states = bind_states(specs, record.policies.clone());
        self.view_of(&record, &states)
    }

    fn view_of(&self, record: &ModelRecord, states: &[PolicyState]) -> ModelView {
        let mut v = ModelView::from_record(&self.id, record, None);
        v.restarts = self.restarts;
        v.decision_counts = self.decision_counts.clone();
        if let Some(rule) = &self.rule {
            v.policies = rule
                .policies
                .iter()
                .zip(states)
                .map(|(spec, st)| PolicyView {
                    name: spec.name.clone(),
                    kind: spec.kind.kind_name().into(),
                    state: st.summary(spec),
                })
                .collect();
        }
        v
    }
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
fn obs_json(model_id: &str, obs: &Obs) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("model_id".into(), model_id.into());
    m.insert("ts".into(), obs.ts.into());
    if let Some(v) = obs.drift_score {
        m.insert("drift_score".into(), v.into());
    }
    if let Some(v) = obs.accuracy {
        m.insert("accuracy".into(), v.into());
    }
    if let Some(v) = obs.error {
        m.insert("error".into(), u8::from(v).into());
    }
    if let Some(v) = obs.value {
        m.insert("value".into(), v.into());
    }
    if !obs.metrics.is_empty() {
        let metrics = obs
            .metrics
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        m.insert("metrics".into(), serde_json::Value::Object(metrics));
    }
    if let Some(meta) = &obs.meta
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(meta)
    {
        m.insert("meta".into(), v);
    }
    serde_json::Value::Object(m)
}

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

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        // One synchronous chance at shutdown: write what is dirty; the daemon flushes after.
        if let Err(error) = self.write() {
            tracing::error!(model_id = %self.id, error = %error, "cannot persist model state at stop");
        }
    }
}

impl Supervised for ModelActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.restarts += 1;
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.write_scheduled = false;
        self.unload_scheduled = false;
        match self.reload() {
            Ok(()) => {
                tracing::warn!(model_id = %self.id, restarts = self.restarts, events = self.record.events, "model actor restarted from its persisted state")
            }
            Err(error) => {
                tracing::error!(model_id = %self.id, error = %error, "model actor restarted but its state could not be reloaded; starting fresh")
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
            tracing::error!(model_id = %self.id, error = %error, "cannot load an idle model's state; restarting its actor");
            ctx.stop();
            return;
        }
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| self.apply(msg.obs())));
        let error = match result {
            Ok(Ok(())) => {
                self.dirty = true;
                self.schedule_write(ctx);
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
        self.dirty = false;
        ctx.stop();
    }
}

impl Handler<Barrier> for ModelActor {
    type Result = Result<(), ModelError>;

    fn handle(&mut self, _msg: Barrier, _ctx: &mut Context<Self>) -> Self::Result {
        self.write()?;
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

    fn handle(&mut self, msg: Reconfigure, ctx: &mut Context<Self>) {
        self.rule = msg.0;
        if !self.loaded {
            // The persisted states are bound to the new policies when they are loaded.
            return;
        }
        let specs = self.rule.as_ref().map(|r| &r.policies[..]).unwrap_or(&[]);
        self.record.policies = bind_states(specs, std::mem::take(&mut self.record.policies));
        self.dirty = true;
        self.schedule_write(ctx);
    }
}

impl Handler<ResetPolicies> for ModelActor {
    type Result = Result<(), ModelError>;

    fn handle(&mut self, msg: ResetPolicies, ctx: &mut Context<Self>) -> Self::Result {
        self.ensure_loaded()?;
        self.schedule_unload_check(ctx);
        let specs = self.rule.as_ref().map(|r| &r.policies[..]).unwrap_or(&[]);
        self.record.policies = specs.iter().map(PolicyState::new).collect();
        self.record.warmup_left = if msg.warmup {
            self.rule.as_ref().map(|r| r.warmup_events).unwrap_or(0)
        } else {
            0
        };
        self.dirty = true;
        self.write()?;
        tracing::info!(model_id = %self.id, warmup = self.record.warmup_left, "policies reset");
        Ok(())
    }
}

impl Handler<Ping> for ModelActor {
    type Result = ();

    fn handle(&mut self, _msg: Ping, _ctx: &mut Context<Self>) {}
}
