//! The `visutility` binary: parse the command line, start tracing, dispatch. What each
//! command does is in [`visutility::cli`]. Errors are printed with their whole chain.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};

use visutility::cli::operator::{self, Ops};
use visutility::cli::{self, Cli, Command, config_error};
use visutility::config::{Config, Env};
use visutility::control::Request;
use visutility::daemon;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        // A reader that went away (`visutility manpage | head`) is not an error to report.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("visutility: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// jemalloc, not glibc's malloc. It keeps allocations of one size class together, so when
/// idle models are unloaded their windows (thousands of equal-sized buffers) leave whole pages
/// free, which its background thread hands back to the system a second later. glibc kept the
/// same memory as holes between live allocations: unloading 10,000 idle models gave back
/// 17 MiB under glibc and 55 MiB under jemalloc (`loadgen recovery`).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation (`MALLOC_CONF` syntax; the
/// `_RJEM_MALLOC_CONF` environment variable overrides them): purge freed pages after about a
/// second, from a background thread, so that an idle daemon shrinks without needing traffic.
#[unsafe(no_mangle)]
#[used]
pub static _rjem_malloc_conf: &u8 =
    &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];

fn run(cli: Cli) -> Result<ExitCode> {
    let env = Env::from_process();
    let mut ops = Ops {
        config: cli.config.clone(),
        control_socket: cli.control_socket.clone(),
        spark_width: usize::MAX,
    };
    match cli.command {
        Command::Daemon => {
            // Before the runtime starts; the environment is left as it is (see take_listener).
            let inherited = visutility::systemd::take_listener("ingest")
                .context("cannot take the socket passed by systemd")?;
            let config = Config::discover(cli.config.as_deref(), &env).map_err(config_error)?;
            cli::log_format::init(config.daemon.log_level.as_deref());
            let config_path = config.source.clone();
            tracing::info!(config = %config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into()), version = env!("CARGO_PKG_VERSION"), "starting");
            daemon::run(daemon::Launch {
                config,
                config_path,
                env,
                inherited,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file, json } => cli::check_config::run(file, cli.config, json, &env),
        Command::Backtest(args) => cli::backtest::run(args, cli.config.as_deref(), &env),
        Command::Push { socket, file } => {
            cli::push::run(socket, &file, cli.config.as_deref(), &env)
        }
        Command::Status { json } => operator::run(&ops, &env, Request::Status, json),
        Command::Models { model, json, width } => {
            ops.spark_width = width.unwrap_or(usize::MAX);
            operator::run(&ops, &env, Request::Models { model }, json)
        }
        Command::History { model, limit, json } => {
            operator::run(&ops, &env, Request::History { model, limit }, json)
        }
        Command::Explain { model, limit, json } => {
            operator::run(&ops, &env, Request::Explain { model, limit }, json)
        }
        Command::Trigger {
            model,
            action,
            json,
            create,
        } => operator::run(
            &ops,
            &env,
            Request::Trigger {
                model,
                action,
                create,
            },
            json,
        ),
        Command::Reset {
            model,
            json,
            create,
        } => operator::run(&ops, &env, Request::Reset { model, create }, json),
        Command::Pause {
            model,
            json,
            create,
        } => operator::run(&ops, &env, Request::Pause { model, create }, json),
        Command::Resume {
            model,
            json,
            create,
        } => operator::run(&ops, &env, Request::Resume { model, create }, json),
        Command::Rollback { model, json } => {
            operator::run(&ops, &env, Request::Rollback { model }, json)
        }
        Command::Promote { model, json } => {
            operator::run(&ops, &env, Request::Promote { model }, json)
        }
        Command::Forget { model, json } => {
            operator::run(&ops, &env, Request::Forget { model }, json)
        }
        Command::Metrics => operator::run(&ops, &env, Request::Metrics, false),
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics when its writer fails (a closed pipe).
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "visutility", &mut buf);
            std::io::stdout().lock().write_all(&buf)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpage { dir } => {
            match dir {
                Some(dir) => clap_mangen::generate_to(Cli::command(), &dir)
                    .with_context(|| format!("cannot write man pages to {}", dir.display()))?,
                None => {
                    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout().lock())?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
