//! The command line: clap definitions only. `main.rs` dispatches; shell completions and the
//! man page are generated from these same definitions (`visutility completions`,
//! `visutility manpage`), so they cannot drift from the parser.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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

    /// Control socket for the operator commands (default: the config's
    /// `daemon.control_socket`, read even from a config that does not validate).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "VISUTILITY_CONTROL_SOCKET"
    )]
    pub control_socket: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (what systemd starts).
    Daemon,
    /// Send NDJSON events from a file or stdin, then a flush barrier.
    Push {
        /// Ingest socket (default: the config's `daemon.socket`).
        #[arg(long, value_name = "PATH", env = "VISUTILITY_SOCKET")]
        socket: Option<PathBuf>,
        /// Events file, or - for stdin.
        #[arg(default_value = "-")]
        file: PathBuf,
    },
    /// Replay recorded events through the configured policies offline.
    ///
    /// Without options: one NDJSON line per signal, `{"index", "model_id", "policy",
    /// "signal", "action"}`.
    Backtest(BacktestArgs),
    /// Validate a config file: every error and warning with its key path, and a summary.
    CheckConfig {
        /// The config file to check (or give it as --config FILE; without either, the file
        /// the daemon would read).
        file: Option<PathBuf>,
        /// Machine output: {"ok", "errors", "warnings", "summary"}.
        #[arg(long)]
        json: bool,
    },
    /// The daemon's state at a glance.
    Status {
        /// Print one JSON object: version, models, events, connections, jobs, store counters.
        #[arg(long)]
        json: bool,
    },
    /// Every model with its policies' state.
    Models {
        /// Only this model.
        model: Option<String>,
        /// Print a JSON array: per model `model_id`, `events`, `last_seen`, `paused`,
        /// `policies` (each with `state`, its named numbers, and `summary`, their words).
        #[arg(long)]
        json: bool,
        /// Points per sparkline (the latest ones; the daemon keeps 32).
        #[arg(long, value_name = "N")]
        width: Option<usize>,
    },
    /// The job journal, newest first.
    History {
        /// Only this model's jobs.
        model: Option<String>,
        /// At most this many jobs.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print a JSON array of jobs: `job_id`, `model_id`, `action`, `state`, `attempts`, `exit_code`, `started`, `ended`.
        #[arg(long)]
        json: bool,
    },
    /// Why a model was (or was not) retrained: its recent decisions, newest first, each
    /// with what the policy compared and what became of it (a job, or why none ran).
    Explain {
        /// The model id.
        model: String,
        /// At most this many entries (the daemon keeps the last 100 per model).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print a JSON array of entries: `seq`, `kind`, `at`, `first_at`, `count`,
        /// `policy`, `action`, `statistic`, `threshold`, `reason`, `outcome` (a job id, or
        /// why no job ran), `job_id`, `note`, `event`.
        #[arg(long)]
        json: bool,
    },
    /// Run a model's hook now (bypasses cooldown and budget, not pause).
    Trigger {
        /// The model id.
        model: String,
        /// Which hook: full or fine_tune.
        #[arg(value_parser = ["full", "fine_tune"])]
        action: String,
        /// Print the daemon's reply as JSON (with the new job's `job_id`).
        #[arg(long)]
        json: bool,
        /// Act on a model id the daemon has never seen (it is created, and counts against
        /// max_models); without it an unknown id is refused.
        #[arg(long)]
        create: bool,
    },
    /// Roll back the model's latest succeeded retrain that has a receipt: runs the
    /// `[hooks] rollback` hook (with `rollback_of` and the receipt on its stdin), then the
    /// escalate hook once; refused when there is nothing to roll back.
    Rollback {
        /// The model id.
        model: String,
        /// Print the daemon's reply as JSON (with the rollback job's `job_id`).
        #[arg(long)]
        json: bool,
    },
    /// End a model's probation now and keep the retrained model: runs the `[hooks] promote`
    /// hook, if there is one; refused when the model is not on probation.
    Promote {
        /// The model id.
        model: String,
        /// Print the daemon's reply as JSON (with the retrain's `job_id`).
        #[arg(long)]
        json: bool,
    },
    /// Start a model's policies afresh.
    Reset {
        /// The model id.
        model: String,
        /// Print the daemon's reply as JSON.
        #[arg(long)]
        json: bool,
        /// Act on a model id the daemon has never seen (it is created, and counts against
        /// max_models); without it an unknown id is refused.
        #[arg(long)]
        create: bool,
    },
    /// Record a model's decisions but run no hooks for it.
    Pause {
        /// The model id.
        model: String,
        /// Print the daemon's reply as JSON.
        #[arg(long)]
        json: bool,
        /// Act on a model id the daemon has never seen (it is created, and counts against
        /// max_models); without it an unknown id is refused.
        #[arg(long)]
        create: bool,
    },
    /// Remove a model for good: its state, counters and runner record (cooldown, pause,
    /// budget); its jobs stay in the journal. Refused while it has a job running or queued.
    Forget {
        /// The model id.
        model: String,
        /// Print the daemon's reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Undo pause.
    Resume {
        /// The model id.
        model: String,
        /// Print the daemon's reply as JSON.
        #[arg(long)]
        json: bool,
        /// Act on a model id the daemon has never seen (it is created, and counts against
        /// max_models); without it an unknown id is refused.
        #[arg(long)]
        create: bool,
    },
    /// The daemon's metrics in the Prometheus text format.
    Metrics,
    /// Print a shell completion script.
    ///
    /// For example `visutility completions bash > /usr/share/bash-completion/completions/visutility`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page in roff.
    ///
    /// Read it with `visutility manpage | man -l -`.
    Manpage {
        /// Write visutility.1 and one page per subcommand into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `backtest`'s arguments (see [`Command::Backtest`]).
#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// Recorded events (NDJSON, as sent to the ingest socket); `-` reads standard input.
    pub events: PathBuf,
    /// One row per model and policy (events, signals, jobs with --simulate, first signal,
    /// signals per 10,000 events) instead of one line per signal.
    #[arg(long)]
    pub summary: bool,
    /// With --summary or --sweep: a JSON array of rows instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Replay as the daemon would have acted (warm-up, one decision per action per batch,
    /// cooldown, budget, loop guard, reset_on_retrain) at the events' `ts`, and print
    /// the jobs it would have started, one NDJSON line each.
    #[arg(long)]
    pub simulate: bool,
    /// With --simulate: how long a hook is assumed to run (seconds of event time); the
    /// job absorbs decisions meanwhile, and its cooldown starts at its end.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    pub retrain_s: f64,
    /// Signal lines also carry `ts`, `statistic`, `threshold`, `state` (named numbers)
    /// and `reason` (the text the hook would get).
    #[arg(long)]
    pub detail: bool,
    /// Count invalid lines, report them on stderr and exit 0, instead of exit 1.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Run the events through one variant of the config per value, every policy of
    /// KIND getting PARAM = V, and print one summary row per variant side by side
    /// (repeatable: the variants of every --sweep in turn).
    #[arg(long, value_name = "KIND.PARAM=V1,V2,...")]
    pub sweep: Vec<String>,
    /// Also run the events through this config, as one more variant beside --config's, and
    /// print one summary row per config side by side (repeatable; the variant is named by
    /// the file).
    #[arg(long, value_name = "FILE", conflicts_with = "report")]
    pub compare: Vec<PathBuf>,
    /// Write one self-contained HTML page: a summary table, and per model and policy the
    /// metric, the statistic against its threshold, a mark per signal and per job the
    /// simulation would have started (--retrain-s applies); no signal lines are printed.
    #[arg(long, value_name = "OUT.html", conflicts_with = "sweep")]
    pub report: Option<PathBuf>,
}
