//! The closed set of messages a [`super::ModelActor`] handles.

use std::ops::Range;
use std::sync::Arc;

use actix::Message;

use crate::config::ModelRule;
use crate::policy::Obs;

use super::{ModelError, ModelView};

/// Events for this model, in arrival order: `events[range]`. A connection sends one shared
/// array per dispatch, sorted by model, and each model its range of it, so a dispatch costs one
/// allocation however many models it reaches.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyBatch {
    pub events: Arc<Vec<Obs>>,
    pub range: Range<usize>,
}

impl ApplyBatch {
    /// This model's events (empty if the range is out of bounds, which a sender never does).
    pub fn obs(&self) -> &[Obs] {
        self.events.get(self.range.clone()).unwrap_or(&[])
    }
}

/// Answered once every earlier message has been applied and the state written to the store
/// (the caller then flushes the store to make it durable).
#[derive(Message)]
#[rtype(result = "Result<(), ModelError>")]
pub struct Barrier;

/// The model's current view, for the control socket.
#[derive(Message)]
#[rtype(result = "ModelView")]
pub struct Snapshot;

/// The config was reloaded: these are the model's policies now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconfigure(pub Option<Arc<ModelRule>>);

/// Start every policy afresh: an operator's `reset`, or a successful retrain with
/// `reset_on_retrain`. `warmup` events follow during which policies observe but do not fire.
#[derive(Message)]
#[rtype(result = "Result<(), ModelError>")]
pub struct ResetPolicies {
    pub warmup: bool,
}

/// A heartbeat for the systemd watchdog: answered only if the actor's thread is alive.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;
