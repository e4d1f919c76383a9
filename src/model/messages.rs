//! The closed set of messages a [`super::ModelActor`] handles.

use std::sync::Arc;

use actix::Message;

use crate::config::ModelRule;
use crate::policy::Obs;

use super::{ModelError, ModelView};

/// Events for this model, in arrival order, batched by the connection that read them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyBatch(pub Vec<Obs>);

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
