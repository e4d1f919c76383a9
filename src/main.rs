//! The `visutility` binary: parse the command line, start tracing, dispatch. Errors are
//! printed with their whole chain.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::Value;

use visutility::cli::{Cli, Command};
use visutility::config::{Config, ConfigError, Env};
use visutility::control::{self, Request};
use visutility::{backtest, daemon};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("visutility: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let env = Env::from_process();
    match cli.command {
        Command::Daemon => {
            // Before any thread exists: taking the socket unsets LISTEN_* in our environment.
            let inherited = visutility::systemd::take_listener("ingest")
                .context("cannot take the socket passed by systemd")?;
            let config = Config::discover(cli.config.as_deref(), &env).map_err(config_error)?;
            init_tracing(config.daemon.log_level.as_deref());
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
        Command::CheckConfig { file } => match Config::load(&file, &env) {
            Ok(c) => {
                print!("{}", c.summary());
                println!("ok");
                Ok(ExitCode::SUCCESS)
            }
            Err(ConfigError::Invalid(errors)) => {
                for e in &errors {
                    println!("{}: {e}", file.display());
                }
                println!("{} error(s)", errors.len());
                Ok(ExitCode::FAILURE)
            }
            Err(e) => Err(config_error(e)),
        },
        Command::Backtest { events } => {
            let config = Config::discover(cli.config.as_deref(), &env).map_err(config_error)?;
            let f = std::fs::File::open(&events)
                .with_context(|| format!("cannot open {}", events.display()))?;
            let stdout = std::io::stdout().lock();
            let summary = backtest::run(&config, std::io::BufReader::new(f), stdout)?;
            for (line, e) in &summary.rejected {
                eprintln!("{}:{line}: {e}", events.display());
            }
            Ok(if summary.rejected.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Push { socket, file } => {
            let config = Config::discover(cli.config.as_deref(), &env).map_err(config_error)?;
            let socket = socket.unwrap_or(config.daemon.socket);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(push(&socket, &file))
        }
        Command::Status { json } => control_cmd(&cli.config, &env, Request::Status, json),
        Command::Models { json } => control_cmd(&cli.config, &env, Request::Models, json),
        Command::History { model, limit, json } => {
            control_cmd(&cli.config, &env, Request::History { model, limit }, json)
        }
        Command::Trigger {
            model,
            action,
            json,
        } => control_cmd(&cli.config, &env, Request::Trigger { model, action }, json),
        Command::Reset { model, json } => {
            control_cmd(&cli.config, &env, Request::Reset { model }, json)
        }
        Command::Pause { model, json } => {
            control_cmd(&cli.config, &env, Request::Pause { model }, json)
        }
        Command::Resume { model, json } => {
            control_cmd(&cli.config, &env, Request::Resume { model }, json)
        }
        Command::Metrics => control_cmd(&cli.config, &env, Request::Metrics, false),
    }
}

fn config_error(e: ConfigError) -> anyhow::Error {
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

/// Plain lines on a terminal; on journald (JOURNAL_STREAM set) no timestamps and no colours,
/// since the journal adds its own.
fn init_tracing(config_level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(config_level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!journald && std::io::stderr().is_terminal());
    if journald {
        builder.without_time().with_target(false).init();
    } else {
        builder.init();
    }
}

fn control_cmd(
    config: &Option<std::path::PathBuf>,
    env: &Env,
    req: Request,
    json: bool,
) -> Result<ExitCode> {
    let config = Config::discover(config.as_deref(), env).map_err(config_error)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let data = rt.block_on(control::request(&config.daemon.control_socket, &req))?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&data)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    match req {
        Request::Metrics => write!(out, "{}", data.as_str().unwrap_or_default())?,
        Request::Status => {
            let obj = data.as_object().cloned().unwrap_or_default();
            for (k, v) in obj {
                writeln!(out, "{k:<20} {}", plain(&v))?;
            }
        }
        Request::Models => print_models(&mut out, &data)?,
        Request::History { .. } => print_history(&mut out, &data)?,
        _ => writeln!(out, "{}", plain(&data))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(plain).collect::<Vec<_>>().join(", "),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.2}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// A sparkline of recent values, because people would rather look than read.
fn sparkline(values: &[Value]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let xs: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
    if xs.is_empty() {
        return "-".into();
    }
    let (lo, hi) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    xs.iter()
        .map(|&x| {
            let t = if hi > lo { (x - lo) / (hi - lo) } else { 0.5 };
            BARS[((t * 7.0).round() as usize).min(7)]
        })
        .collect()
}

fn print_models(out: &mut impl Write, data: &Value) -> Result<()> {
    let models = data.as_array().cloned().unwrap_or_default();
    writeln!(
        out,
        "{:<24} {:>10} {:>9} {:<6} {:<18} {:<18} LAST DECISION",
        "MODEL", "EVENTS", "DECISIONS", "PAUSED", "DRIFT", "ACCURACY"
    )?;
    for m in &models {
        let empty = Vec::new();
        let last = m["last_decision"]
            .as_object()
            .map(|d| {
                format!(
                    "{} by {}",
                    d["action"].as_str().unwrap_or(""),
                    d["policy"].as_str().unwrap_or("")
                )
            })
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<24} {:>10} {:>9} {:<6} {:<18} {:<18} {}",
            m["model_id"].as_str().unwrap_or(""),
            m["events"].to_string(),
            m["decisions"].to_string(),
            if m["paused"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            sparkline(m["recent_drift"].as_array().unwrap_or(&empty)),
            sparkline(m["recent_accuracy"].as_array().unwrap_or(&empty)),
            last
        )?;
        for p in m["policies"].as_array().unwrap_or(&empty) {
            writeln!(
                out,
                "    {:<20} {:<16} {}",
                p["name"].as_str().unwrap_or(""),
                p["kind"].as_str().unwrap_or(""),
                p["state"].as_str().unwrap_or("")
            )?;
        }
    }
    Ok(())
}

fn print_history(out: &mut impl Write, data: &Value) -> Result<()> {
    writeln!(
        out,
        "{:>8} {:<24} {:<10} {:<12} {:>8} {:>5} NOTE",
        "JOB", "MODEL", "ACTION", "STATE", "ATTEMPTS", "EXIT"
    )?;
    for j in data.as_array().cloned().unwrap_or_default() {
        writeln!(
            out,
            "{:>8} {:<24} {:<10} {:<12} {:>8} {:>5} {}",
            j["job_id"].to_string(),
            j["model_id"].as_str().unwrap_or(""),
            j["action"].as_str().unwrap_or(""),
            j["state"].as_str().unwrap_or(""),
            j["attempts"].to_string(),
            j["exit_code"]
                .as_i64()
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            j["note"].as_str().unwrap_or("")
        )?;
    }
    Ok(())
}

/// Streams `file` to the ingest socket, then a flush; prints error replies and the flush reply.
async fn push(socket: &Path, file: &Path) -> Result<ExitCode> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| {
            format!(
                "cannot connect to {} (is the daemon running?)",
                socket.display()
            )
        })?;
    let (rd, mut wr) = stream.into_split();
    // Replies are read while we write, or a client sending many bad lines would deadlock on
    // full socket buffers.
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(rd).lines();
        let mut errors = 0u64;
        while let Ok(Some(line)) = lines.next_line().await {
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v.get("error").is_some() && v.get("ok").is_none() {
                errors += 1;
                eprintln!("{line}");
            } else {
                println!("{line}");
                return Ok::<_, anyhow::Error>((errors, v));
            }
        }
        bail!("the daemon closed the connection before answering the flush")
    });
    let input: Box<dyn BufRead + Send> = if file == Path::new("-") {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
        ))
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let producer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut input = input;
        let mut chunk = Vec::with_capacity(1 << 16);
        let mut line = Vec::new();
        loop {
            line.clear();
            if input.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            // Every line is a protocol line: `op` lines from the file count as ops too, so
            // a file without a final newline still ends its last line.
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            chunk.extend_from_slice(&line);
            if chunk.len() >= 1 << 16 && tx.blocking_send(std::mem::take(&mut chunk)).is_err() {
                return Ok(());
            }
        }
        if !chunk.is_empty() {
            let _ = tx.blocking_send(chunk);
        }
        Ok(())
    });
    while let Some(chunk) = rx.recv().await {
        wr.write_all(&chunk).await?;
    }
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("input reader panicked"))??;
    wr.write_all(b"{\"op\":\"flush\"}\n").await?;
    let (errors, reply) = reader.await??;
    if reply.get("ok").and_then(Value::as_bool) != Some(true) {
        bail!("the flush failed: {reply}");
    }
    let rejected = reply
        .get("rejected")
        .and_then(Value::as_u64)
        .unwrap_or(errors);
    Ok(if rejected > 0 || errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
