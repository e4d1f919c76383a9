//! The closed set of messages a [`super::ModelActor`] handles.

use std::ops::Range;
use std::sync::Arc;

use actix::Message;
use tokio::sync::mpsc::UnboundedSender;

use crate::config::ModelRule;
use crate::policy::Obs;

use super::{ModelError, ModelView};

/// Events for this model, in arrival order: `events[range]`. A connection sends one shared
/// array per dispatch, sorted by model, and each model its range of it, so a dispatch costs one
/// message per model and no allocation once the connection's arrays are recycled.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyBatch {
    pub events: Arc<EventArray>,
    pub range: Range<usize>,
}

impl ApplyBatch {
    /// This model's events (empty if the range is out of bounds, which a sender never does).
    pub fn obs(&self) -> &[Obs] {
        self.events.events.get(self.range.clone()).unwrap_or(&[])
    }
}

/// One dispatch's events, shared by the batches that name ranges of it. When the last batch is
/// done with it (applied, or dropped with a stopped actor's mailbox) the emptied vector goes
/// back to the connection that filled it: for reuse, and to tell it how many of its dispatches
/// are still in flight.
pub struct EventArray {
    events: Vec<Obs>,
    home: UnboundedSender<Vec<Obs>>,
}

impl EventArray {
    pub fn new(events: Vec<Obs>, home: UnboundedSender<Vec<Obs>>) -> Self {
        EventArray { events, home }
    }
}

impl Drop for EventArray {
    fn drop(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        // A closed connection no longer wants it; then it is simply freed.
        let _ = self.home.send(events);
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

/// `forget`: the model's state, counters and stored records go (its jobs stay in the
/// journal); the actor carries on as a model never seen.
#[derive(Message)]
#[rtype(result = "Result<(), ModelError>")]
pub struct Forget;

/// A heartbeat for the systemd watchdog: answered only if the actor's thread is alive.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

/// A retrain of this model succeeded: with `reset`, its policies start afresh (with warm-up);
/// for a rule with a probation, the retrain's probation starts, judged against `baseline` (the
/// one its decision froze; `None`: the model's own, by the rule's `baseline`). Idempotent: a
/// probation of the same job already running is left as it is (the daemon sends it again at
/// start for every probation the journal holds).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartProbation {
    pub job_id: u64,
    pub baseline: Option<crate::probation::Sample>,
    /// When the retrain succeeded (wall clock).
    pub at: f64,
    pub reset: bool,
}

/// An operator ended the probation of retrain `job_id` (`promote`, or `rollback`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct EndProbation {
    pub job_id: u64,
    pub state: crate::probation::State,
    pub cause: Option<crate::probation::Cause>,
    pub at: f64,
}
