//! The operator commands (`status`, `models`, `history`, `explain`, `trigger`, `reset`,
//! `pause`, `resume`, `forget`, `metrics`): one request on the control socket, the reply as a
//! table or a line for people, or as JSON with `--json`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};

use super::render;
use crate::config::{Config, Env};
use crate::control::{self, ControlError, Data, Request};

/// Where the operator commands find the daemon.
pub struct Ops {
    pub config: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    /// How many points a `models` sparkline shows (`--width`).
    pub spark_width: usize,
}

/// Sends `req` and prints the reply: with `json`, the data as the daemon sent it (pretty,
/// keys sorted); else a table or a line, read through the reply's type.
pub fn run(ops: &Ops, env: &Env, req: Request, json: bool) -> Result<ExitCode> {
    // Only the socket path is needed: a config with a typo must not lock the operator out.
    let socket = match &ops.control_socket {
        Some(s) => s.clone(),
        None => {
            let (_, socket, warning) = Config::sockets(ops.config.as_deref(), env);
            if let Some(w) = warning {
                eprintln!("warning: {w}");
            }
            socket
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let data = rt.block_on(control::request(&socket, &req))?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&data)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    // The daemon answered, so the ids passed its check; escaped all the same.
    let escape = |s: &str| crate::escape::escape(s).into_owned();
    match (Data::decode(&req, data).map_err(ControlError::Reply)?, req) {
        (Data::Metrics(text), _) => write!(out, "{text}")?,
        (Data::Status(status), _) => render::status(&mut out, &status)?,
        (Data::Models(models), _) => render::models(&mut out, &models, ops.spark_width)?,
        (Data::History(jobs), _) => render::history(&mut out, &jobs)?,
        (Data::Explain(entries), _) => render::explain(&mut out, &entries)?,
        (Data::Triggered(t), Request::Trigger { model, action, .. }) => writeln!(
            out,
            "job {} queued: {} for {}",
            t.job_id,
            escape(&action),
            escape(&model)
        )?,
        (Data::Triggered(t), Request::Rollback { model }) => writeln!(
            out,
            "job {} queued: rollback for {}",
            t.job_id,
            escape(&model)
        )?,
        (Data::Triggered(t), Request::Promote { model }) => writeln!(
            out,
            "{}: retrain job {} promoted; its probation ended",
            escape(&model),
            t.job_id
        )?,
        (Data::Reset(_), Request::Reset { model, .. }) => {
            writeln!(out, "{}: policies reset", escape(&model))?
        }
        (Data::Paused(_), Request::Pause { model, .. }) => writeln!(
            out,
            "{}: paused (decisions recorded, no hooks run)",
            escape(&model)
        )?,
        (Data::Paused(_), Request::Resume { model, .. }) => {
            writeln!(out, "{}: resumed", escape(&model))?
        }
        (Data::Forgotten(_), Request::Forget { model }) => writeln!(
            out,
            "{}: forgotten (state, counters and runner record removed; its jobs stay in the history)",
            escape(&model)
        )?,
        // Not a CLI command: the fault suite sends it over the socket directly.
        (Data::Fault(fault), _) => writeln!(out, "{}", serde_json::to_string(&fault)?)?,
        // Data::decode reads each request's reply as its own variant: never taken.
        (data, req) => bail!("the reply {data:?} does not answer {req:?}"),
    }
    Ok(ExitCode::SUCCESS)
}
