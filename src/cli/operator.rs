//! The operator commands (`status`, `models`, `history`, `trigger`, `reset`, `pause`,
//! `resume`, `forget`, `metrics`): one request on the control socket, the reply as a table
//! or a line for people, or as JSON with `--json`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::render;
use crate::config::{Config, Env};
use crate::control::{self, Request};

/// Where the operator commands find the daemon.
pub struct Ops {
    pub config: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    /// How many points a `models` sparkline shows (`--width`).
    pub spark_width: usize,
}

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
    match req {
        Request::Metrics => write!(out, "{}", data.as_str().unwrap_or_default())?,
        Request::Status => render::status(&mut out, &data)?,
        Request::Models { .. } => render::models(&mut out, &data, ops.spark_width)?,
        Request::History { .. } => render::history(&mut out, &data)?,
        // The daemon answered, so the id passed its check; escaped all the same.
        Request::Trigger { model, action, .. } => writeln!(
            out,
            "job {} queued: {} for {}",
            data["job_id"],
            crate::escape::escape(&action),
            crate::escape::escape(&model)
        )?,
        Request::Reset { model, .. } => {
            writeln!(out, "{}: policies reset", crate::escape::escape(&model))?
        }
        Request::Pause { model, .. } => writeln!(
            out,
            "{}: paused (decisions recorded, no hooks run)",
            crate::escape::escape(&model)
        )?,
        Request::Resume { model, .. } => {
            writeln!(out, "{}: resumed", crate::escape::escape(&model))?
        }
        Request::Forget { model } => writeln!(
            out,
            "{}: forgotten (state, counters and runner record removed; its jobs stay in the history)",
            crate::escape::escape(&model)
        )?,
        // Not a CLI command: the fault suite sends it over the socket directly.
        Request::Fault { .. } => writeln!(out, "{data}")?,
    }
    Ok(ExitCode::SUCCESS)
}
