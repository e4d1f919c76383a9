//! The control socket: the operator's view and levers (`status`, `models`, `history`,
//! `trigger`, `reset`, `pause`, `resume`, `metrics`).
//!
//! Framing: one JSON request line, one JSON reply line, then the server closes.
//!
//! ```text
//! -> {"cmd": "history", "model": "fraud-v3", "limit": 50}
//! <- {"ok": true, "data": [...]}          or   {"ok": false, "error": "..."}
//! ```
//!
//! Every connection's peer credentials (SO_PEERCRED) are checked first: root, the daemon's
//! own uid, the uids listed in `daemon.control_allow`, peers whose primary or supplementary
//! gids include a gid listed there, and members of `daemon.control_group` are served; anyone
//! else is refused and the attempt is logged.

pub mod http;
pub mod metrics;
use crate::peer;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Addr;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::command::{CommandActor, Decision, ForgetRunner, GetStatus, SetPaused, Trigger};
use crate::ingest::{IngestStats, SocketFile};
use crate::model::registry::Registry;
use crate::model::{Forget, ModelView, ResetPolicies, Snapshot};
use crate::policy::Action;
use crate::store::Store;

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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Models {
        /// Only this model (an unknown id is refused).
        #[serde(default)]
        model: Option<String>,
    },
    History {
        #[serde(default)]
        model: Option<String>,
        #[serde(default = "default_limit")]
        limit: usize,
    },
    Trigger {
        model: String,
        action: String,
        /// Act on a model the daemon has never seen (it is created).
        #[serde(default)]
        create: bool,
    },
    /// Removes a model's state, counters and runner record (its jobs stay in the journal).
    Forget {
        model: String,
    },
    Reset {
        model: String,
        /// Act on a model the daemon has never seen (it is created).
        #[serde(default)]
        create: bool,
    },
    Pause {
        model: String,
        /// Act on a model the daemon has never seen (it is created).
        #[serde(default)]
        create: bool,
    },
    Resume {
        model: String,
        /// Act on a model the daemon has never seen (it is created).
        #[serde(default)]
        create: bool,
    },
    Metrics,
    /// Test seam, refused unless the daemon runs with `VISUTILITY_FAULT_INJECTION=1`:
    /// `{"cmd":"fault","store":true}` makes the store fail every write and flush.
    Fault {
        store: bool,
    },
}

fn default_limit() -> usize {
    100
}

/// Sends one request and returns the reply's `data`.
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
    let v: serde_json::Value = serde_json::from_str(&reply)?;
    if v.get("ok").and_then(|o| o.as_bool()) == Some(true) {
        Ok(v.get("data").cloned().unwrap_or(serde_json::Value::Null))
    } else {
        Err(ControlError::Refused(
            v.get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("refused")
                .to_owned(),
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
        let reply = serde_json::json!({
            "ok": false,
            "error": format!(
                "permission denied: uid {} is not allowed on the control socket \
                 (see daemon.control_allow and daemon.control_group)",
                peer.uid
            ),
        });
        wr.write_all(format!("{reply}\n").as_bytes()).await?;
        return Ok(());
    }
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(64 * 1024);
    tokio::time::timeout(Duration::from_secs(10), rd.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))??;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => match answer(req, ctx).await {
            Ok(data) => serde_json::json!({"ok": true, "data": data}),
            Err(e) => serde_json::json!({"ok": false, "error": e}),
        },
        Err(e) => serde_json::json!({"ok": false, "error": format!("bad request: {e}")}),
    };
    let mut out = serde_json::to_vec(&reply)?;
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

async fn answer(req: Request, ctx: &ControlCtx) -> Result<serde_json::Value, String> {
    let v = match req {
        Request::Status => {
            let store_error = ctx.store.health();
            let runner = ctx
                .commander
                .send(GetStatus)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_s": ctx.started.elapsed().as_secs_f64(),
                "models": ctx.registry.known(),
                "models_loaded": ctx.registry.len(),
                "events_per_second": ctx.rate.per_second(),
                "events_accepted": ctx.stats.accepted.load(Ordering::Relaxed),
                "lines_rejected": ctx.stats.rejected.load(Ordering::Relaxed),
                "connections": ctx.stats.connections.load(Ordering::Relaxed),
                "connections_refused": ctx.stats.connections_refused.load(Ordering::Relaxed)
                    + ctx.stats.connections_refused_uid.load(Ordering::Relaxed)
                    + ctx.stats.connections_denied.load(Ordering::Relaxed),
                "replies_dropped": ctx.stats.replies_dropped.load(Ordering::Relaxed),
                "jobs_running": runner.running,
                "jobs_queued": runner.queued,
                "paused": runner.paused,
                "store_bytes": ctx.store.size_on_disk(),
                "store_ok": store_error.is_none(),
                "store_error": store_error,
                "store": ctx.store.stats(),
                "state_dir": ctx.store.path().display().to_string(),
                "clock": ctx.clock.view(),
            })
        }
        Request::Models { model } => {
            if let Some(m) = &model {
                known_or_create(ctx, m, false)?;
            }
            let runner = ctx
                .commander
                .send(GetStatus)
                .await
                .map_err(|e| e.to_string())?;
            let views = model_views(ctx).await;
            let arr: Vec<serde_json::Value> = views
                .into_iter()
                .filter(|v| model.as_ref().is_none_or(|m| *m == v.model_id))
                .map(|v| {
                    let paused = runner.paused.contains(&v.model_id);
                    let mut j = serde_json::to_value(&v).unwrap_or_default();
                    j["paused"] = paused.into();
                    j
                })
                .collect();
            serde_json::Value::Array(arr)
        }
        Request::History { model, limit } => {
            if let Some(m) = &model {
                crate::protocol::validate_model_id(m).map_err(|e| e.detail)?;
            }
            let jobs = ctx
                .store
                .jobs(model.as_deref(), limit)
                .map_err(|e| e.to_string())?;
            serde_json::Value::Array(jobs.iter().map(job_json).collect())
        }
        Request::Trigger {
            model,
            action,
            create,
        } => {
            known_or_create(ctx, &model, create)?;
            let action = Action::parse(&action)
                .ok_or_else(|| format!("unknown action {action:?}; expected full or fine_tune"))?;
            let job_id = ctx
                .commander
                .send(Trigger(Decision::manual(&model, action)))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            serde_json::json!({"job_id": job_id})
        }
        Request::Reset { model, create } => {
            known_or_create(ctx, &model, create)?;
            let h = ctx
                .registry
                .get_or_create(&model)
                .map_err(|e| e.to_string())?;
            h.addr
                .send(ResetPolicies { warmup: false })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            serde_json::json!({"model_id": model, "reset": true})
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
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let h = ctx
                .registry
                .get_or_create(&model)
                .map_err(|e| e.to_string())?;
            h.addr
                .send(Forget)
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            ctx.store
                .flush()
                .await
                .map_err(|e| format!("the store could not make the forget durable: {e}"))?;
            ctx.registry.forgotten();
            serde_json::json!({"model_id": model, "forgotten": true})
        }
        Request::Metrics => {
            serde_json::Value::String(metrics::render(&metrics::snapshot(ctx).await))
        }
        Request::Fault { store } => {
            if std::env::var_os("VISUTILITY_FAULT_INJECTION").is_none_or(|v| v != "1") {
                return Err(
                    "fault injection is disabled (VISUTILITY_FAULT_INJECTION=1 enables it)".into(),
                );
            }
            ctx.store.set_fault(store);
            serde_json::json!({"store_fault": store})
        }
    };
    Ok(v)
}

/// Refuses an id the daemon has never seen (a typo must not create a model, pause nothing
/// or run a real hook), unless `create` asks for it: then the model is created (it counts
/// against `max_models`).
fn known_or_create(ctx: &ControlCtx, model: &str, create: bool) -> Result<(), String> {
    crate::protocol::validate_model_id(model).map_err(|e| e.detail)?;
    if ctx.registry.knows(model) {
        return Ok(());
    }
    if !create {
        return Err(format!(
            "unknown model {}: the daemon has never seen it (check the id with `visutility models`, or pass --create to act on it anyway)",
            crate::escape::escape(model)
        ));
    }
    ctx.registry
        .get_or_create(model)
        .map(drop)
        .map_err(|e| e.to_string())
}

async fn set_paused(
    ctx: &ControlCtx,
    model: String,
    paused: bool,
) -> Result<serde_json::Value, String> {
    crate::protocol::validate_model_id(&model).map_err(|e| e.detail)?;
    ctx.commander
        .send(SetPaused {
            model_id: model.clone(),
            paused,
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(serde_json::json!({"model_id": model, "paused": paused}))
}

pub fn job_json(j: &crate::store::Job) -> serde_json::Value {
    serde_json::json!({
        "job_id": j.job_id,
        "model_id": j.model_id,
        "action": j.action.as_str(),
        "policy": j.policy,
        "reason": j.reason,
        "state": j.state.as_str(),
        "attempts": j.attempts,
        "exit_code": j.exit_code,
        "signal": j.signal,
        "created": j.created,
        "started": j.started,
        "ended": j.ended,
        "note": j.note,
        "command": j.command,
        "stdout_tail": j.stdout_tail,
        "stderr_tail": j.stderr_tail,
        "retry_of": j.retry_of,
        "transitions": j.transitions.iter().map(|(s, t)| serde_json::json!({"state": s.as_str(), "at": t})).collect::<Vec<_>>(),
    })
}
