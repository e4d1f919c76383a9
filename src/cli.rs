//! The command line: clap definitions only. `main.rs` dispatches.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "visutility",
    version,
    about = "Watches ML models in production and retrains them when they drift"
)]
pub struct Cli {
    /// Config file (default: $CONFIGURATION_DIRECTORY/config.toml, /etc/visutility/config.toml
    /// as root, then the user's config dir, else built-in defaults).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (what systemd starts).
    Daemon,
    /// Send NDJSON events from a file or stdin, then a flush barrier.
    Push {
        /// Ingest socket (default: the config's).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Events file, or - for stdin.
        #[arg(default_value = "-")]
        file: PathBuf,
    },
    /// Replay recorded events through the configured policies offline.
    Backtest {
        /// Recorded events (NDJSON, as sent to the ingest socket).
        events: PathBuf,
    },
    /// Validate a config file.
    CheckConfig { file: PathBuf },
    /// The daemon's state at a glance.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Every model with its policies' state.
    Models {
        #[arg(long)]
        json: bool,
    },
    /// The job journal, newest first.
    History {
        model: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Run a model's hook now (bypasses cooldown and budget, not pause).
    Trigger {
        model: String,
        /// full or fine_tune
        action: String,
        #[arg(long)]
        json: bool,
    },
    /// Start a model's policies afresh.
    Reset {
        model: String,
        #[arg(long)]
        json: bool,
    },
    /// Record a model's decisions but run no hooks for it.
    Pause {
        model: String,
        #[arg(long)]
        json: bool,
    },
    /// Undo pause.
    Resume {
        model: String,
        #[arg(long)]
        json: bool,
    },
    /// The daemon's metrics in the Prometheus text format.
    Metrics,
}
