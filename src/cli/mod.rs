//! The command line: the clap definitions ([`Cli`], in `args.rs`) and what each command does
//! beyond dispatch, which is all `main.rs` keeps.
//!
//! - `args.rs`: the clap definitions only; shell completions and the man page are generated
//!   from them (`visutility completions`, `visutility manpage`), so they cannot drift from
//!   the parser.
//! - [`operator`]: the operator commands, one request on the control socket each (the
//!   request and reply types are [`crate::control::api`]'s, shared with the daemon).
//! - [`push`]: the ingest socket's client.
//! - [`backtest`] and [`check_config`]: the offline commands.
//! - `render.rs`: tables, sparklines and durations for people.
//! - [`log_format`]: the daemon's log lines (plain, or journald's format).
//!
//! This is the binary's side of the crate, in the library so that its unit tests run with
//! the others: like `main.rs` it reports errors as `anyhow` chains, which end at `main`.

mod args;
pub mod backtest;
pub mod check_config;
pub mod log_format;
pub mod operator;
pub mod push;
mod render;

pub use args::{BacktestArgs, Cli, Command};

use crate::config::ConfigError;

/// A config error for the user: an invalid config as its key errors, one indented line each.
pub fn config_error(e: ConfigError) -> anyhow::Error {
    match e {
        ConfigError::Invalid(errors) => {
            anyhow::anyhow!(
                "invalid config:\n{}",
                errors
                    .iter()
                    .map(|e| format!("  {e}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        }
        other => anyhow::Error::new(other),
    }
}
