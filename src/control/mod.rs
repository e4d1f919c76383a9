//! The control socket: the operator's view and levers (`status`, `models`, `history`,
//! `explain`, `trigger`, `reset`, `pause`, `resume`, `forget`, `metrics`).
//!
//! Framing: one JSON request line, one JSON reply line, then the server closes.
//!
//! ```text
//! -> {"cmd": "history", "model": "fraud-v3", "limit": 50}
//! <- {"ok": true, "data": [...]}          or   {"ok": false, "error": "..."}
//! ```
//!
//! The requests and replies are the types of [`api`], which the CLI reads back.
//!
//! Every connection's peer credentials (SO_PEERCRED) are checked first: root, the daemon's
//! own uid, the uids listed in `daemon.control_allow`, peers whose primary or supplementary
//! gids include a gid listed there, and members of `daemon.control_group` are served; anyone
//! else is refused and the attempt is logged.

pub mod api;
pub mod http;
pub mod metrics;
use crate::peer;

pub use api::{Data, Reply, Request};

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Addr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::command::{
    CommandActor, CommandError, Decision, ForgetRunner, GetExplain, GetStatus, SetPaused, Trigger,
};
use crate::ingest::{IngestStats, SocketFile};
use crate::model::registry::{Registry, RegistryError};
use crate::model::{Forget, ModelError, ModelView, ResetPolicies, Snapshot};
use crate::policy::Action;
use crate::store::{Store, StoreError};

/// Why a request on the control socket failed, as its client sees it.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot connect to the control socket {path} (is the daemon running?)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket i/o failed")]
    Io(#[from] std::io::Error),
    #[error("the daemon sent an unreadable reply")]
    Reply(#[from] serde_json::Error),
    #[error("{0}")]
    Refused(String),
}

/// Why the daemon did not serve a request. Its text (`Display`, which names the cause) is the
/// reply's `error`; the cause itself is kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("bad request: {0}")]
    BadRequest(#[source] serde_json::Error),
    #[error(
        "permission denied: uid {uid} is not allowed on the control socket \
         (see daemon.control_allow and daemon.control_group)"
    )]
    PeerNotAllowed { uid: u32 },
    /// An invalid model id, in the protocol's words.
    #[error("{}", .0.detail)]
    BadModelId(#[source] crate::protocol::LineError),
    #[error(
        "unknown model {}: the daemon has never seen it (check the id with `visutility models`, or pass --create to act on it anyway)",
        crate::escape::escape(.0)
    )]
    UnknownModel(String),
    #[error(
        "unknown model {}: the daemon has never seen it and has no decision of it (check the id with `visutility models`)",
        crate::escape::escape(.0)
    )]
    NoDecisions(String),
    #[error("unknown action {0:?}; expected full or fine_tune")]
    UnknownAction(String),
    #[error("fault injection is disabled (VISUTILITY_FAULT_INJECTION=1 enables it)")]
    FaultInjectionDisabled,
    #[error("the store could not make the forget durable: {0}")]
    ForgetNotDurable(#[source] StoreError),
    #[error(transparent)]
    Mailbox(#[from] actix::MailboxError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Sends one request and returns the reply's `data` as the daemon sent it; [`Data::decode`]
/// reads it as the request's reply type.
pub async fn request(path: &Path, req: &Request) -> Result<serde_json::Value, ControlError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::Connect {
            path: path.display().to_string(),
            source,
        })?;
    let (rd, mut wr) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    // A refusal is written before the request is read, and the connection closed: the write
    // may then fail, but the reply saying why is there to read.
    let sent = wr.write_all(&line).await;
    let mut reply = String::new();
    let read = BufReader::new(rd).read_line(&mut reply).await;
    if reply.trim().is_empty() {
        sent?;
        read?;
        return Err(ControlError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection without a reply",
        )));
    }
    let reply: Reply<serde_json::Value> = serde_json::from_str(&reply)?;
    if reply.ok {
        Ok(reply.data.unwrap_or_default())
    } else {
        Err(ControlError::Refused(
            reply.error.unwrap_or_else(|| "refused".into()),
        ))
    }
}

/// Events-per-second over the last minute: one sample of the accepted counter per second.
#[derive(Default)]
pub struct Rate {
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl Rate {
    pub fn sample(&self, total: u64) {
        let mut s = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.push_back((Instant::now(), total));
        while s.len() > 61 {
            s.pop_front();
        }
    }

    pub fn per_second(&self) -> f64 {
        let s = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (s.front(), s.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// What the control server needs.
#[derive(Clone)]
pub struct ControlCtx {
    pub registry: Registry,
    pub store: Store,
    pub commander: Addr<CommandActor>,
    pub stats: Arc<IngestStats>,
    pub rate: Arc<Rate>,
    /// Wall clock jumps seen while running.
    pub clock: Arc<crate::clock::Watch>,
    pub started: Instant,
    /// `daemon.control_allow` plus the gid of `daemon.control_group` (as a gid).
    pub allow: Arc<crate::config::PeerAllow>,
    /// Refused connections, for `metrics`.
    pub refused: Arc<AtomicU64>,
    /// Refused connections, for the log (one line per uid and interval).
    pub refusals: Arc<peer::RefusalLog>,
    pub shutdown: watch::Receiver<bool>,
    /// `[metrics] max_model_series`: models past it are summed in the metrics.
    pub max_model_series: usize,
}

pub async fn serve(socket: SocketFile, ctx: ControlCtx) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let (stream, _) = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            a = socket.listener.accept() => match a {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(error = %error, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let c = ctx.clone();
        actix::spawn(async move {
            if let Err(error) = handle(stream, &c).await {
                tracing::debug!(error = %error, "control connection failed");
            }
        });
    }
}

async fn handle(stream: UnixStream, ctx: &ControlCtx) -> Result<(), ControlError> {
    let peer = peer::Peer::of(&stream)?;
    let (rd, mut wr) = stream.into_split();
    if !peer.allowed(&ctx.allow) {
        ctx.refused.fetch_add(1, Ordering::Relaxed);
        if ctx.refusals.first(peer.uid, Instant::now()) {
            tracing::warn!(
                uid = peer.uid,
                gid = peer.gid,
                "control request refused: peer not allowed (further refusals of this uid are \
                 summed up once a minute)"
            );
        }
        let reply = Reply::<Data>::refused(Refusal::PeerNotAllowed { uid: peer.uid });
        write_reply(&mut wr, &reply).await?;
        return Ok(());
    }
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(64 * 1024);
    tokio::time::timeout(Duration::from_secs(10), rd.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))??;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => match answer(req, ctx).await {
            Ok(data) => Reply::served(data),
            Err(e) => Reply::refused(e),
        },
        Err(e) => Reply::refused(Refusal::BadRequest(e)),
    };
    write_reply(&mut wr, &reply).await
}

/// Writes one reply line. Through a `Value`, whose keys are sorted: the bytes are those of
/// the `json!` replies the API types replaced.
async fn write_reply(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply<Data>,
) -> Result<(), ControlError> {
    let mut out = serde_json::to_vec(&serde_json::to_value(reply)?)?;
    out.push(b'\n');
    wr.write_all(&out).await?;
    Ok(())
}

/// Views of every model: live actors answer for themselves, the rest come from the store.
pub async fn model_views(ctx: &ControlCtx) -> Vec<ModelView> {
    let mut views = Vec::new();
    let live = ctx.registry.all();
    for (id, addr) in &live {
        if let Ok(v) = addr.send(Snapshot).await {
            // An actor that never applied an event and has nothing stored is no model (yet):
            // a forgotten one, or one a refused request started.
            if v.events == 0 && !ctx.store.contains_model(id) {
                continue;
            }
            views.push(v);
        }
    }
    // Models not loaded in this run: their checkpoint, plus the events logged after it (at
    // start, until the recovered models have loaded and folded, the log holds the newest).
    let mut seen = std::collections::HashSet::new();
    for (id, rec) in ctx.store.models().filter_map(Result::ok) {
        if !live.iter().any(|(l, _)| **l == *id) {
            let rule = ctx.registry.rule_for(&id);
            let rec = if ctx.store.has_tail(&id) {
                ctx.store
                    .load_model_state(&id)
                    .map_or(rec, |l| crate::model::replay(l, rule.as_deref()))
            } else {
                rec
            };
            views.push(ModelView::from_record(&id, &rec, rule.as_deref()));
        }
        seen.insert(id);
    }
    for id in ctx.store.recovered_models() {
        if seen.contains(&id) || live.iter().any(|(l, _)| **l == *id) {
            continue;
        }
        let rule = ctx.registry.rule_for(&id);
        if let Ok(loaded) = ctx.store.load_model_state(&id) {
            let rec = crate::model::replay(loaded, rule.as_deref());
            views.push(ModelView::from_record(&id, &rec, rule.as_deref()));
        }
    }
    views.sort_by(|a, b| a.model_id.cmp(&b.model_id));
    views
}

async fn answer(req: Request, ctx: &ControlCtx) -> Result<Data, Refusal> {
    let data = match req {
        Request::Status => {
            let store_error = ctx.store.health();
            let runner = ctx.commander.send(GetStatus).await?;
            Data::Status(Box::new(api::Status {
                version: env!("CARGO_PKG_VERSION").into(),
                uptime_s: ctx.started.elapsed().as_secs_f64(),
                models: ctx.registry.known(),
                models_loaded: ctx.registry.len(),
                events_per_second: ctx.rate.per_second(),
                events_accepted: ctx.stats.accepted.load(Ordering::Relaxed),
                lines_rejected: ctx.stats.rejected.load(Ordering::Relaxed),
                connections: ctx.stats.connections.load(Ordering::Relaxed),
                connections_refused: ctx.stats.connections_refused.load(Ordering::Relaxed)
                    + ctx.stats.connections_refused_uid.load(Ordering::Relaxed)
                    + ctx.stats.connections_denied.load(Ordering::Relaxed),
                replies_dropped: ctx.stats.replies_dropped.load(Ordering::Relaxed),
                jobs_running: runner.running,
                jobs_queued: runner.queued,
                paused: runner.paused,
                models_on_probation: runner.on_probation,
                store_bytes: ctx.store.size_on_disk(),
                store_ok: store_error.is_none(),
                store_error,
                store: ctx.store.stats(),
                state_dir: ctx.store.path().display().to_string(),
                clock: ctx.clock.view(),
            }))
        }
        Request::Models { model } => {
            if let Some(m) = &model {
                known_or_create(ctx, m, false)?;
            }
            let runner = ctx.commander.send(GetStatus).await?;
            let views = model_views(ctx).await;
            Data::Models(
                views
                    .into_iter()
                    .filter(|v| model.as_ref().is_none_or(|m| *m == v.model_id))
                    .map(|v| {
                        let paused = runner.paused.contains(&v.model_id);
                        api::ModelInfo::new(v, paused)
                    })
                    .collect(),
            )
        }
        Request::History { model, limit } => {
            if let Some(m) = &model {
                crate::protocol::validate_model_id(m).map_err(Refusal::BadModelId)?;
            }
            let jobs = ctx.store.jobs(model.as_deref(), limit)?;
            let mut infos = Vec::with_capacity(jobs.len());
            for job in &jobs {
                let mut info = api::JobInfo::from(job);
                if job.action.is_retrain() {
                    info.receipt = ctx
                        .store
                        .receipt(job.job_id)?
                        .and_then(|r| serde_json::from_str(&r).ok());
                    info.probation = ctx
                        .store
                        .probation(job.job_id)?
                        .filter(|r| r.state != crate::store::ProbationState::Pending)
                        .map(|r| api::JobProbationInfo::of(&r));
                }
                infos.push(info);
            }
            Data::History(infos)
        }
        Request::Explain { model, limit } => {
            crate::protocol::validate_model_id(&model).map_err(Refusal::BadModelId)?;
            let entries = ctx
                .commander
                .send(GetExplain {
                    model_id: model.clone(),
                    limit,
                })
                .await??;
            // A typo must not read as "no decisions yet".
            if entries.is_empty() && !ctx.registry.knows(&model) {
                return Err(Refusal::NoDecisions(model));
            }
            Data::Explain(
                entries
                    .iter()
                    .map(|(seq, e)| api::ExplainInfo::new(*seq, e))
                    .collect(),
            )
        }
        Request::Trigger {
            model,
            action,
            create,
        } => {
            known_or_create(ctx, &model, create)?;
            let action = Action::parse(&action).ok_or(Refusal::UnknownAction(action))?;
            let job_id = ctx
                .commander
                .send(Trigger(Decision::manual(&model, action)))
                .await??;
            Data::Triggered(api::Triggered { job_id })
        }
        Request::Rollback { model } => {
            known_or_create(ctx, &model, false)?;
            let job_id = ctx
                .commander
                .send(crate::command::RollBack {
                    model_id: model.clone(),
                })
                .await??;
            Data::Triggered(api::Triggered { job_id })
        }
        Request::Promote { model } => {
            known_or_create(ctx, &model, false)?;
            let job_id = ctx
                .commander
                .send(crate::command::Promote {
                    model_id: model.clone(),
                })
                .await??;
            Data::Triggered(api::Triggered { job_id })
        }
        Request::Reset { model, create } => {
            known_or_create(ctx, &model, create)?;
            let h = ctx.registry.get_or_create(&model)?;
            h.addr.send(ResetPolicies { warmup: false }).await??;
            Data::Reset(api::ResetDone {
                model_id: model,
                reset: true,
            })
        }
        Request::Pause { model, create } => {
            known_or_create(ctx, &model, create)?;
            set_paused(ctx, model, true).await?
        }
        Request::Resume { model, create } => {
            known_or_create(ctx, &model, create)?;
            set_paused(ctx, model, false).await?
        }
        Request::Forget { model } => {
            known_or_create(ctx, &model, false)?;
            ctx.commander
                .send(ForgetRunner {
                    model_id: model.clone(),
                })
                .await??;
            let h = ctx.registry.get_or_create(&model)?;
            h.addr.send(Forget).await??;
            ctx.store.flush().await.map_err(Refusal::ForgetNotDurable)?;
            ctx.registry.forgotten();
            Data::Forgotten(api::Forgotten {
                model_id: model,
                forgotten: true,
            })
        }
        Request::Metrics => Data::Metrics(metrics::render(&metrics::snapshot(ctx).await)),
        Request::Fault { store } => {
            if std::env::var_os("VISUTILITY_FAULT_INJECTION").is_none_or(|v| v != "1") {
                return Err(Refusal::FaultInjectionDisabled);
            }
            ctx.store.set_fault(store);
            Data::Fault(api::FaultSet { store_fault: store })
        }
    };
    Ok(data)
}

/// Refuses an id the daemon has never seen (a typo must not create a model, pause nothing
/// or run a real hook), unless `create` asks for it: then the model is created (it counts
/// against `max_models`).
fn known_or_create(ctx: &ControlCtx, model: &str, create: bool) -> Result<(), Refusal> {
    crate::protocol::validate_model_id(model).map_err(Refusal::BadModelId)?;
    if ctx.registry.knows(model) {
        return Ok(());
    }
    if !create {
        return Err(Refusal::UnknownModel(model.to_owned()));
    }
    ctx.registry.get_or_create(model)?;
    Ok(())
}

async fn set_paused(ctx: &ControlCtx, model: String, paused: bool) -> Result<Data, Refusal> {
    crate::protocol::validate_model_id(&model).map_err(Refusal::BadModelId)?;
    ctx.commander
        .send(SetPaused {
            model_id: model.clone(),
            paused,
        })
        .await??;
    Ok(Data::Paused(api::PauseSet {
        model_id: model,
        paused,
    }))
}
