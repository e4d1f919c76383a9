//! `visutility check-config`: a config's every error and warning with its key path, the
//! checks on the hooks' and the state directory's ownership and modes, and a summary; as
//! lines for people or one JSON object for tools.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::config::{Config, ConfigError, Env, KeyError};
use crate::strict_modes;

/// `check-config`: every error and warning with its key path, one line each, then `ok` or
/// the count of errors (exit 1); with `json`, one object that says the same.
pub fn run(
    file: Option<PathBuf>,
    config: Option<PathBuf>,
    json: bool,
    env: &Env,
) -> Result<ExitCode> {
    // FILE is what to check; `--config` (which every command takes, and tools pass along)
    // names it only when FILE is absent.
    let file = match file.or(config) {
        Some(f) => f,
        None => env.config_file().context(
            "no config file given (visutility check-config FILE) and none in the look-up order",
        )?,
    };
    let line = |path: &str, message: String| KeyError {
        path: path.to_owned(),
        message,
    };
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut insecure = false;
    let config = match Config::load(&file, env) {
        Ok(c) => Some(c),
        Err(ConfigError::Invalid(e)) => {
            errors = e;
            None
        }
        Err(e) => {
            let message = match std::error::Error::source(&e) {
                Some(source) => format!("{e}: {source}"),
                None => e.to_string(),
            };
            errors.push(line("", message));
            None
        }
    };
    if let Some(c) = &config {
        warnings = c.warnings();
        let hooks = strict_modes::check_hook_programs(&c.hooks);
        errors.extend(hooks.errors);
        warnings.extend(hooks.warnings);
        if c.daemon.allow_insecure_modes {
            warnings.push(line(
                "daemon.allow_insecure_modes",
                "true: the ownership and mode checks are off".into(),
            ));
        } else {
            // Judged for the user running check-config (the service user under ExecReload=).
            let found = strict_modes::check_config(c, strict_modes::daemon_uid());
            insecure = !found.0.is_empty();
            for e in &found.0 {
                let message = match std::error::Error::source(e) {
                    Some(source) => format!("insecure {e}: {source}"),
                    None => format!("insecure {e}"),
                };
                errors.push(line("", message));
            }
        }
    }
    let code = if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    let mut out = std::io::stdout().lock();
    if json {
        let list = |l: &[KeyError]| -> Vec<Value> {
            l.iter()
                .map(|e| serde_json::json!({"path": e.path, "message": e.message}))
                .collect()
        };
        let report = serde_json::json!({
            "ok": errors.is_empty(),
            "errors": list(&errors),
            "warnings": list(&warnings),
            "summary": config.as_ref().map(Config::summary_json),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(code);
    }
    if let Some(c) = &config {
        write!(out, "{}", c.summary())?;
    }
    for e in &errors {
        writeln!(out, "{}: {e}", file.display())?;
    }
    if insecure {
        writeln!(
            out,
            "{}: (or set [daemon] allow_insecure_modes = true, on a development machine only)",
            file.display()
        )?;
    }
    for w in &warnings {
        writeln!(out, "warning: {}: {w}", file.display())?;
    }
    if errors.is_empty() {
        writeln!(out, "ok")?;
    } else {
        writeln!(out, "{} error(s)", errors.len())?;
    }
    Ok(code)
}
