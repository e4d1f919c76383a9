//! The registry of live model actors: created on first sight, up to `max_models`.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::prelude::*;

use crate::command::messages::{Decision, ProbationVerdict};
use crate::command::{ModelNotice, ProbationBegun};
use crate::config::{Config, ModelRule};
use crate::store::{Store, StoreError};

use super::{ModelActor, ModelSetup, Reconfigure};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("max_models ({0}) reached; new model ids are refused")]
    TooManyModels(usize),
    #[error("cannot load the model's state")]
    Store(#[from] StoreError),
    #[error("invalid model id: {}", .0.detail)]
    BadId(#[source] crate::protocol::LineError),
}

/// Shared by every connection and the control socket; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    store: Store,
    arbiter: ArbiterHandle,
    fault_injection: bool,
    /// Where every model's decisions go (the hook runner), wired once at start.
    commander: Recipient<Decision>,
    /// Where probation verdicts go (the hook runner too).
    verdicts: Recipient<ProbationVerdict>,
}

/// A live model: its actor and its restart epoch (see `ModelActor`).
#[derive(Clone)]
pub struct ModelHandle {
    pub id: Arc<str>,
    pub addr: Addr<ModelActor>,
    pub epoch: Arc<AtomicU64>,
}

struct Inner {
    actors: HashMap<Arc<str>, ModelHandle>,
    /// Models in the store at start, once counted (see [`Registry::count_stored`]).
    stored: Option<usize>,
    /// Models first seen since start, less those forgotten.
    created: isize,
    config: Arc<Config>,
    /// Rules shared by the actors, one `Arc` per config rule.
    rules: Vec<Arc<ModelRule>>,
}

impl Inner {
    /// Models that exist: those stored at start and those first seen since. A model first
    /// seen while the store was being counted may be in both (the count is then a little
    /// high, for that start only).
    fn known(&self) -> usize {
        match self.stored {
            Some(n) => (n as isize + self.created).max(0) as usize,
            None => self.actors.len(),
        }
    }
}

impl Registry {
    /// Model actors run on `arbiter` (their own thread, so policy work and socket parsing use
    /// both cores) and send their decisions to `commander`.
    pub fn new(
        config: Arc<Config>,
        store: Store,
        arbiter: ArbiterHandle,
        commander: Recipient<Decision>,
        verdicts: Recipient<ProbationVerdict>,
        fault_injection: bool,
    ) -> Registry {
        let rules = config.models.iter().cloned().map(Arc::new).collect();
        Registry {
            inner: Arc::new(Mutex::new(Inner {
                actors: HashMap::new(),
                stored: None,
                created: 0,
                config,
                rules,
            })),
            store,
            arbiter,
            fault_injection,
            commander,
            verdicts,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the map inconsistent (inserts are
        // single operations), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The models' thread: a connection hands it one dispatch as one task, which fans the
    /// batches out to the actors there (one wake-up of the thread, not one per model).
    pub fn arbiter(&self) -> &ArbiterHandle {
        &self.arbiter
    }

    /// Returns once the models' thread has run every task queued to it before this call (a
    /// connection's fanned-out dispatches, see `ingest::connection`): messages sent after it
    /// reach each actor behind those batches. Returns at once if the thread is gone.
    pub async fn models_caught_up(&self) {
        let (done, ran) = tokio::sync::oneshot::channel();
        if self.arbiter.spawn_fn(move || {
            let _ = done.send(());
        }) {
            let _ = ran.await;
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.lock().config.clone()
    }

    pub fn get(&self, model_id: &str) -> Option<Addr<ModelActor>> {
        self.lock().actors.get(model_id).map(|h| h.addr.clone())
    }

    pub fn rule_for(&self, model_id: &str) -> Option<Arc<ModelRule>> {
        let inner = self.lock();
        rule_index(&inner.config, model_id).map(|i| inner.rules[i].clone())
    }

    /// The model's actor, started (with its persisted state) if this is its first sight.
    pub fn get_or_create(&self, model_id: &str) -> Result<ModelHandle, RegistryError> {
        // Every entry point checks ids already; this is the last line before an actor and a
        // store record exist for one.
        crate::protocol::validate_model_id(model_id).map_err(RegistryError::BadId)?;
        if let Some(h) = self.lock().actors.get(model_id) {
            return Ok(h.clone());
        }
        // Read before the lock is taken: a slow disk must not stall every connection. (The
        // model's state itself is read by its actor when it starts, on the models' thread.)
        let stored = self.store.contains_model(model_id);
        let mut inner = self.lock();
        if let Some(h) = inner.actors.get(model_id) {
            return Ok(h.clone());
        }
        // `max_models` bounds the models that exist, stored ones included: a model of an
        // earlier run takes its slot whether or not it has sent anything since the restart.
        let max = inner.config.daemon.max_models;
        if !stored && inner.known() >= max {
            return Err(RegistryError::TooManyModels(max));
        }
        let commander = self.commander.clone();
        let id: Arc<str> = model_id.into();
        let rule = rule_index(&inner.config, model_id).map(|i| inner.rules[i].clone());
        let epoch = Arc::new(AtomicU64::new(0));
        let actor = ModelActor::new(ModelSetup {
            epoch: epoch.clone(),
            id: id.clone(),
            rule,
            store: self.store.clone(),
            commander,
            verdicts: self.verdicts.clone(),
            flush_interval: Duration::from_millis(inner.config.daemon.flush_interval_ms),
            idle_unload: (inner.config.daemon.model_idle_unload_s > 0)
                .then(|| Duration::from_secs(inner.config.daemon.model_idle_unload_s)),
            fault_injection: self.fault_injection,
        });
        let addr = Supervisor::start_in_arbiter(&self.arbiter, move |_| actor);
        let handle = ModelHandle {
            id: id.clone(),
            addr,
            epoch,
        };
        inner.actors.insert(id, handle.clone());
        if !stored {
            inner.created += 1;
        }
        Ok(handle)
    }

    /// News from the hook runner for a model (see [`ModelNotice`]): queued to the model
    /// before the runner journals what led to it, so events sent after an operator sees it meet
    /// fresh policies. For a retrain of a model whose rule has a probation, answers what the
    /// runner records of the probation.
    pub fn notice(&self, notice: ModelNotice<'_>) -> Option<ProbationBegun> {
        match notice {
            ModelNotice::Retrained {
                model_id,
                job_id,
                baseline,
                at,
                probation_only,
            } => {
                let rule = self.rule_for(model_id)?;
                let reset = rule.reset_on_retrain;
                let Some(spec) = &rule.probation else {
                    if reset
                        && !probation_only
                        && let Some(addr) = self.get(model_id)
                    {
                        addr.do_send(super::ResetPolicies { warmup: true });
                    }
                    return None;
                };
                // The probation needs the model's actor, loaded now if need be.
                match self.get_or_create(model_id) {
                    Ok(h) => h.addr.do_send(super::StartProbation {
                        job_id,
                        baseline,
                        at,
                        reset,
                    }),
                    Err(error) => {
                        tracing::error!(model_id, job_id, error = %error, "cannot start the retrain's probation");
                        return None;
                    }
                }
                Some(ProbationBegun {
                    metric: spec.metric.clone(),
                    tolerance: spec.rule.tolerance,
                })
            }
            ModelNotice::RolledBack { model_id } => {
                if self.rule_for(model_id).is_some_and(|r| r.reset_on_retrain)
                    && let Some(addr) = self.get(model_id)
                {
                    addr.do_send(super::ResetPolicies { warmup: true });
                }
                None
            }
            ModelNotice::ProbationEnded {
                model_id,
                job_id,
                state,
                cause,
                at,
            } => {
                if let Ok(h) = self.get_or_create(model_id) {
                    h.addr.do_send(super::EndProbation {
                        job_id,
                        state,
                        cause,
                        at,
                    });
                }
                None
            }
        }
    }

    /// Whether the daemon knows `model_id`: it has an actor in this run or anything stored.
    pub fn knows(&self, model_id: &str) -> bool {
        self.lock().actors.contains_key(model_id) || self.store.contains_model(model_id)
    }

    /// A `forget` freed the model's `max_models` slot (its actor stays, as a model never seen;
    /// if its id sends again through a connection that still holds the actor, the slot is
    /// taken again at the next restart's count).
    pub fn forgotten(&self) {
        let mut inner = self.lock();
        inner.created -= 1;
    }

    /// Counts the models in the store (a scan of every record: after READY, on a thread of
    /// its own, so neither the start nor its memory waits for it). Until it is done,
    /// `max_models` counts the models of this run.
    pub fn count_stored(&self) {
        let n = self.store.model_count();
        self.lock().stored = Some(n);
    }

    /// Models that exist (what `max_models` bounds).
    pub fn known(&self) -> usize {
        self.lock().known()
    }

    pub fn all(&self) -> Vec<(Arc<str>, Addr<ModelActor>)> {
        self.lock()
            .actors
            .iter()
            .map(|(k, v)| (k.clone(), v.addr.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().actors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reloaded config: every live actor gets its (possibly changed) rule.
    pub fn reconfigure(&self, config: Arc<Config>) {
        let mut inner = self.lock();
        inner.rules = config.models.iter().cloned().map(Arc::new).collect();
        inner.config = config;
        for (id, h) in &inner.actors {
            let rule = rule_index(&inner.config, id).map(|i| inner.rules[i].clone());
            h.addr.do_send(Reconfigure(rule));
        }
    }
}

fn rule_index(config: &Config, model_id: &str) -> Option<usize> {
    config
        .models
        .iter()
        .position(|r| crate::config::glob_match(&r.pattern, model_id))
}
