//! The `visutility` binary: parse the command line, start tracing, dispatch. Errors are
//! printed with their whole chain.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser};
use serde_json::Value;

use visutility::cli::{Cli, Command};
use visutility::config::{Config, ConfigError, Env, KeyError};
use visutility::control::{self, Request};
use visutility::{backtest, daemon, strict_modes};

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
        Command::CheckConfig { file, json } => check_config(file, cli.config, json, &env),
        Command::Backtest {
            events,
            summary,
            json,
            simulate,
            retrain_s,
            detail,
            skip_invalid,
            sweep,
            report,
        } => {
            if !(retrain_s.is_finite() && retrain_s >= 0.0) {
                bail!("--retrain-s must be a finite number >= 0, got {retrain_s}");
            }
            let config = Config::discover(cli.config.as_deref(), &env).map_err(config_error)?;
            let mut variants = vec![(String::new(), config)];
            if !sweep.is_empty() {
                let Some(path) = cli.config.as_deref() else {
                    bail!("--sweep needs --config FILE");
                };
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                variants.clear();
                for s in &sweep {
                    for (label, text) in backtest::sweep_variants(&text, s)? {
                        let config = Config::from_toml(&text, &env)
                            .map_err(config_error)
                            .with_context(|| format!("--sweep variant {label}"))?;
                        variants.push((label, config));
                    }
                }
            }
            // Several variants read the events several times: from stdin, keep them.
            let stdin_events = if events.as_os_str() == "-" && variants.len() > 1 {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut buf)
                    .context("cannot read the events")?;
                Some(buf)
            } else {
                None
            };
            let opts = backtest::Options {
                detail,
                simulate: simulate.then_some(backtest::Simulate { retrain_s }),
                quiet: summary || !sweep.is_empty(),
            };
            let mut out = std::io::stdout().lock();
            let mut rows = Vec::new();
            let mut rejected = Vec::new();
            let started = std::time::Instant::now();
            let mut replayed = 0u64;
            for (label, config) in &variants {
                let input: Box<dyn std::io::Read> = match &stdin_events {
                    Some(buf) => Box::new(std::io::Cursor::new(buf.clone())),
                    None if events.as_os_str() == "-" => Box::new(std::io::stdin().lock()),
                    None => Box::new(
                        std::fs::File::open(&events)
                            .with_context(|| format!("cannot open {}", events.display()))?,
                    ),
                };
                let input = std::io::BufReader::new(input);
                let s = match &report {
                    Some(path) => {
                        let labels = backtest::report::Options {
                            events: &events,
                            retrain_s,
                        };
                        backtest::report::write(config, input, path, &labels)?
                    }
                    None => backtest::run(config, input, &mut out, &opts)?,
                };
                replayed += s.events;
                rejected = s.rejected;
                rows.extend(s.rows.into_iter().map(|r| (label.clone(), r)));
            }
            tracing::debug!(
                events = replayed,
                elapsed_s = started.elapsed().as_secs_f64(),
                "backtest done"
            );
            if opts.quiet {
                let simulate = simulate || report.is_some();
                print_backtest_rows(&mut out, &rows, !sweep.is_empty(), simulate, json)?;
            }
            if skip_invalid {
                if !rejected.is_empty() {
                    eprintln!(
                        "{}: {} invalid line{} skipped",
                        events.display(),
                        rejected.len(),
                        if rejected.len() == 1 { "" } else { "s" }
                    );
                }
                for (line, e) in rejected.iter().take(10) {
                    eprintln!("{}:{line}: {e}", events.display());
                }
                if rejected.len() > 10 {
                    eprintln!("{}: ... and {} more", events.display(), rejected.len() - 10);
                }
                return Ok(ExitCode::SUCCESS);
            }
            for (line, e) in &rejected {
                eprintln!("{}:{line}: {e}", events.display());
            }
            Ok(if rejected.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Push { socket, file } => {
            let socket = match socket {
                Some(s) => s,
                None => {
                    let (socket, _, warning) = Config::sockets(cli.config.as_deref(), &env);
                    if let Some(w) = warning {
                        eprintln!("warning: {w}");
                    }
                    socket
                }
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(push(&socket, &file))
        }
        Command::Status { json } => control_cmd(&ops, &env, Request::Status, json),
        Command::Models { model, json, width } => {
            ops.spark_width = width.unwrap_or(usize::MAX);
            control_cmd(&ops, &env, Request::Models { model }, json)
        }
        Command::History { model, limit, json } => {
            control_cmd(&ops, &env, Request::History { model, limit }, json)
        }
        Command::Trigger {
            model,
            action,
            json,
            create,
        } => control_cmd(
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
        } => control_cmd(&ops, &env, Request::Reset { model, create }, json),
        Command::Pause {
            model,
            json,
            create,
        } => control_cmd(&ops, &env, Request::Pause { model, create }, json),
        Command::Resume {
            model,
            json,
            create,
        } => control_cmd(&ops, &env, Request::Resume { model, create }, json),
        Command::Forget { model, json } => control_cmd(&ops, &env, Request::Forget { model }, json),
        Command::Metrics => control_cmd(&ops, &env, Request::Metrics, false),
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

/// `check-config`: every error and warning with its key path, one line each, then `ok` or
/// the count of errors (exit 1); with `json`, one object that says the same.
fn check_config(
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

/// Plain lines on a terminal (with colours) or in a file; when stderr is the journal
/// (`JOURNAL_STREAM` names it), no timestamps and each line prefixed with its syslog priority,
/// which journald reads as the entry's level. `RUST_LOG` wins over `[daemon] log_level`.
/// A bare level in `log_level` is for our own messages; libraries stay at `warn` (sled's
/// debug output would bury ours), unless directives say otherwise.
fn init_tracing(config_level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let config_level = config_level.map(|l| {
        let level = l.trim().to_ascii_lowercase();
        match level.as_str() {
            "trace" | "debug" | "info" | "warn" => format!("warn,visutility={level}"),
            "error" | "off" => level,
            _ => l.to_owned(),
        }
    });
    let config_level = config_level.as_deref();
    let rust_log = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    let (filter, bad_rust_log) = match rust_log.as_deref().map(EnvFilter::try_new) {
        Some(Ok(f)) => (f, None),
        other => (
            EnvFilter::try_new(config_level.unwrap_or("info"))
                .unwrap_or_else(|_| EnvFilter::new("info")),
            other.and_then(|r| r.err()),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(EscapedFields)
        .with_writer(std::io::stderr);
    if stderr_is_journal() {
        builder.event_format(JournalFormat).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
    if let Some(error) = bad_rust_log {
        tracing::warn!(error = %error, "ignoring RUST_LOG; using the configured log level");
    }
}

/// systemd sets `JOURNAL_STREAM=DEV:INODE` for the stream it connects stderr to; a child
/// whose stderr was redirected inherits the variable, so the numbers must match our stderr.
fn stderr_is_journal() -> bool {
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (d, i) = v.split_once(':')?;
        Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    // SAFETY: fstat writes only into `st`, which lives across the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(2, &mut st) } == 0) && st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

/// Field values as the default formatter writes them (`message` first, then `key=value`), but
/// with non-printable characters escaped: a model id, a hook's output line or an error text
/// can then never forge a log line, a journal priority or a terminal escape. Only the message
/// keeps its line breaks (the daemon's own multi-line messages; the journal format prefixes
/// each line).
struct EscapedFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for EscapedFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = EscapingVisitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'a, 'w> {
    writer: &'a mut tracing_subscriber::fmt::format::Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl tracing::field::Visit for EscapingVisitor<'_, '_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use visutility::escape::{escape, escape_except};
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let sep = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        let text = format!("{value:?}");
        self.result = if name == "message" {
            write!(self.writer, "{sep}{}", escape_except(&text, Some('\n')))
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            write!(self.writer, "{sep}{name}={}", escape(&text))
        };
    }
}

/// journald's stream format: `<N>message` per line, N the syslog priority; no timestamp
/// (the journal keeps its own). A message with several lines gets the prefix on each, or
/// journald would file the rest at the default priority.
struct JournalFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use std::fmt::Write as _;
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        let mut line = String::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                line.push_str(span.name());
                let ext = span.extensions();
                if let Some(fields) = ext.get::<tracing_subscriber::fmt::FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(line, "{{{fields}}}")?;
                }
                line.push_str(": ");
            }
        }
        ctx.field_format().format_fields(
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        if line.is_empty() {
            return writeln!(writer, "<{priority}>");
        }
        for l in line.lines() {
            writeln!(writer, "<{priority}>{l}")?;
        }
        Ok(())
    }
}

/// Where the operator commands find the daemon.
struct Ops {
    config: Option<std::path::PathBuf>,
    control_socket: Option<std::path::PathBuf>,
    /// How many points a `models` sparkline shows (`--width`).
    spark_width: usize,
}

fn control_cmd(ops: &Ops, env: &Env, req: Request, json: bool) -> Result<ExitCode> {
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
        Request::Status => print_status(&mut out, &data)?,
        Request::Models { .. } => print_models(&mut out, &data, ops.spark_width)?,
        Request::History { .. } => print_history(&mut out, &data)?,
        // The daemon answered, so the id passed its check; escaped all the same.
        Request::Trigger { model, action, .. } => writeln!(
            out,
            "job {} queued: {} for {}",
            data["job_id"],
            visutility::escape::escape(&action),
            visutility::escape::escape(&model)
        )?,
        Request::Reset { model, .. } => writeln!(
            out,
            "{}: policies reset",
            visutility::escape::escape(&model)
        )?,
        Request::Pause { model, .. } => writeln!(
            out,
            "{}: paused (decisions recorded, no hooks run)",
            visutility::escape::escape(&model)
        )?,
        Request::Resume { model, .. } => {
            writeln!(out, "{}: resumed", visutility::escape::escape(&model))?
        }
        Request::Forget { model } => writeln!(
            out,
            "{}: forgotten (state, counters and runner record removed; its jobs stay in the history)",
            visutility::escape::escape(&model)
        )?,
        // Not a CLI command: the fault suite sends it over the socket directly.
        Request::Fault { .. } => writeln!(out, "{data}")?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Lines of a table whose columns are as wide as their widest cell; `right` marks the
/// columns aligned right (numbers). The last column is not padded.
fn table(header: &[&str], right: &[bool], rows: &[Vec<String>]) -> Vec<String> {
    // Cells come from the daemon (ids, policy names, notes): never raw control characters.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| visutility::escape::escape(c).into_owned())
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut l = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i > 0 {
                l.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                l.extend(std::iter::repeat_n(' ', pad));
                l.push_str(cell);
            } else {
                l.push_str(cell);
                if i < last {
                    l.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        l
    };
    std::iter::once(line(header.to_vec()))
        .chain(
            rows.iter()
                .map(|r| line(r.iter().map(String::as_str).collect())),
        )
        .collect()
}

/// `3d 4h`, `2h 05m`, `4m 09s`, `12s`.
fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// How long ago a Unix time was, or `-` for none.
fn ago(ts: Option<f64>) -> String {
    match ts {
        Some(t) if t > 0.0 => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(t);
            format!("{} ago", human_duration(now - t))
        }
        _ => "-".into(),
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn print_status(out: &mut impl Write, s: &Value) -> Result<()> {
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    let paused: Vec<&str> = s["paused"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let rows = [
        ("version", s["version"].as_str().unwrap_or("?").to_owned()),
        (
            "uptime",
            human_duration(s["uptime_s"].as_f64().unwrap_or(0.0)),
        ),
        (
            "models",
            format!("{} known, {} loaded", n("models"), n("models_loaded")),
        ),
        (
            "events/s",
            format!(
                "{:.1} over the last minute",
                s["events_per_second"].as_f64().unwrap_or(0.0)
            ),
        ),
        (
            "events",
            format!(
                "{} accepted, {} lines rejected",
                n("events_accepted"),
                n("lines_rejected")
            ),
        ),
        ("connections", format!("{} open", n("connections"))),
        (
            "jobs",
            format!("{} running, {} queued", n("jobs_running"), n("jobs_queued")),
        ),
        (
            "paused",
            if paused.is_empty() {
                "none".into()
            } else {
                paused.join(", ")
            },
        ),
        (
            "store",
            format!(
                "{} in {}",
                human_bytes(n("store_bytes")),
                s["state_dir"].as_str().unwrap_or("?")
            ),
        ),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        writeln!(out, "{k:<width$}  {}", visutility::escape::escape(&v))?;
    }
    Ok(())
}

/// `backtest --summary` / `--sweep`: one row per (variant,) model and policy, as a table or
/// a JSON array.
fn print_backtest_rows(
    out: &mut impl Write,
    rows: &[(String, backtest::Row)],
    sweep: bool,
    simulate: bool,
    json: bool,
) -> Result<()> {
    if json {
        let arr: Vec<Value> = rows
            .iter()
            .map(|(label, r)| {
                let mut v = r.to_json();
                if sweep {
                    v["variant"] = label.clone().into();
                }
                v
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&arr)?)?;
        return Ok(());
    }
    if rows.is_empty() {
        writeln!(out, "no events matched a [[models]] rule")?;
        return Ok(());
    }
    let mut head = vec!["MODEL", "POLICY", "KIND", "EVENTS", "SIGNALS", "WARNINGS"];
    if simulate {
        head.push("JOBS");
    }
    head.extend(["FIRST SIGNAL", "PER 10K"]);
    if sweep {
        head.insert(0, "VARIANT");
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(label, r)| {
            let mut row = vec![
                r.model_id.clone(),
                r.policy.clone(),
                r.kind.to_owned(),
                r.events.to_string(),
                r.signals.to_string(),
                r.warnings.to_string(),
            ];
            if simulate {
                row.push(r.jobs.unwrap_or(0).to_string());
            }
            row.push(match r.first_signal {
                Some((i, ts)) => format!("#{i} (ts {ts})"),
                None => "-".into(),
            });
            row.push(format!("{:.2}", r.per_10k()));
            if sweep {
                row.insert(0, label.clone());
            }
            row
        })
        .collect();
    let offset = usize::from(sweep);
    let mut numeric = vec![false; head.len()];
    for i in 3..6 + usize::from(simulate) {
        numeric[i + offset] = true;
    }
    for line in table(&head, &numeric, &table_rows) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// A sparkline of recent values, because people would rather look than read. On a metric's
/// fixed `scale` (drift_score and accuracy live in [0, 1]) a steady model looks steady; without
/// one the bars span the values' own range.
fn sparkline(values: &[Value], scale: Option<(f64, f64)>) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let xs: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
    if xs.is_empty() {
        return "-".into();
    }
    let (lo, hi) = scale.unwrap_or_else(|| {
        xs.iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)))
    });
    xs.iter()
        .map(|&x| {
            let t = if hi > lo {
                ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
            } else {
                0.5
            };
            BARS[((t * 7.0).round() as usize).min(7)]
        })
        .collect()
}

/// The last `width` values as a sparkline on the [0, 1] scale of drift_score and accuracy,
/// then the latest value, so the level is readable.
fn spark_cell(values: Option<&Vec<Value>>, width: usize) -> String {
    let values = values.map(Vec::as_slice).unwrap_or_default();
    let values = &values[values.len().saturating_sub(width)..];
    match values.last().and_then(Value::as_f64) {
        Some(last) if width > 0 => format!("{} {last:.2}", sparkline(values, Some((0.0, 1.0)))),
        _ => "-".into(),
    }
}

fn print_models(out: &mut impl Write, data: &Value, spark_width: usize) -> Result<()> {
    let models = data.as_array().cloned().unwrap_or_default();
    if models.is_empty() {
        writeln!(out, "no models yet")?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            let last = m["last_decision"]
                .as_object()
                .map(|d| {
                    format!(
                        "{} by {}, {}",
                        d["action"].as_str().unwrap_or(""),
                        d["policy"].as_str().unwrap_or(""),
                        ago(d["at"].as_f64())
                    )
                })
                .unwrap_or_else(|| "-".into());
            vec![
                m["model_id"].as_str().unwrap_or("").to_owned(),
                m["events"].to_string(),
                ago(m["last_seen"].as_f64()),
                m["decisions"].to_string(),
                if m["paused"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                }
                .into(),
                spark_cell(m["recent_drift"].as_array(), spark_width),
                spark_cell(m["recent_accuracy"].as_array(), spark_width),
                last,
            ]
        })
        .collect();
    let lines = table(
        &[
            "MODEL",
            "EVENTS",
            "LAST SEEN",
            "DECISIONS",
            "PAUSED",
            "DRIFT",
            "ACCURACY",
            "LAST DECISION",
        ],
        &[false, true, false, true],
        &rows,
    );
    // Under each model, one line per policy: its name (and kind, when the name differs),
    // then its state as the policy tells it.
    let policies = |m: &Value| -> Vec<(String, String)> {
        m["policies"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        let (name, kind) = (
                            p["name"].as_str().unwrap_or(""),
                            p["kind"].as_str().unwrap_or(""),
                        );
                        let label = if name == kind {
                            name.to_owned()
                        } else {
                            format!("{name} ({kind})")
                        };
                        (
                            visutility::escape::escape(&label).into_owned(),
                            visutility::escape::escape(p["summary"].as_str().unwrap_or(""))
                                .into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let label_w = models
        .iter()
        .flat_map(policies)
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    writeln!(out, "{}", lines[0])?;
    for (m, line) in models.iter().zip(&lines[1..]) {
        writeln!(out, "{line}")?;
        for (label, state) in policies(m) {
            writeln!(out, "    {label:<label_w$}  {state}")?;
        }
    }
    Ok(())
}

fn print_history(out: &mut impl Write, data: &Value) -> Result<()> {
    let jobs = data.as_array().cloned().unwrap_or_default();
    if jobs.is_empty() {
        writeln!(out, "no jobs")?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let took = match (j["started"].as_f64(), j["ended"].as_f64()) {
                (Some(s), Some(e)) => human_duration(e - s),
                _ => "-".into(),
            };
            // The reason can be long (a detector's statistic, the loop guard's why): cut.
            let reason: String = j["reason"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(60)
                .collect();
            vec![
                j["job_id"].to_string(),
                j["model_id"].as_str().unwrap_or("").to_owned(),
                j["action"].as_str().unwrap_or("").to_owned(),
                j["policy"].as_str().unwrap_or("").to_owned(),
                j["state"].as_str().unwrap_or("").to_owned(),
                j["attempts"].to_string(),
                j["exit_code"]
                    .as_i64()
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                ago(j["created"].as_f64()),
                took,
                reason,
                j["note"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    for line in table(
        &[
            "JOB", "MODEL", "ACTION", "POLICY", "STATE", "ATTEMPTS", "EXIT", "CREATED", "TOOK",
            "REASON", "NOTE",
        ],
        &[
            true, false, false, false, false, true, true, false, true, false,
        ],
        &rows,
    ) {
        writeln!(out, "{}", line.trim_end())?;
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
                writeln!(std::io::stderr(), "{line}")?;
            } else {
                writeln!(std::io::stdout(), "{line}")?;
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
    let sent: std::io::Result<()> = async {
        while let Some(chunk) = rx.recv().await {
            wr.write_all(&chunk).await?;
        }
        wr.write_all(b"{\"op\":\"flush\"}\n").await
    }
    .await;
    // A failed write stops the producer at its next chunk.
    drop(rx);
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("input reader panicked"))??;
    // When the daemon closed the connection (a refusal, say), its reply says why: read it
    // before reporting the failed write.
    let (errors, reply) = match (sent, reader.await?) {
        (_, Ok(r)) => r,
        (Ok(()), Err(e)) => return Err(e),
        (Err(w), Err(e)) => return Err(e.context(format!("sending failed: {w}"))),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13.4: on the fixed [0, 1] scale a steady model looks steady (the old min-max
    /// scale drew 0.50 and 0.51 as the lowest and highest bars); `--width` keeps the latest.
    #[test]
    fn sparklines_use_the_fixed_scale_and_the_width() {
        let steady: Vec<Value> = [0.5, 0.51, 0.5, 0.51].iter().map(|&x| x.into()).collect();
        assert_eq!(sparkline(&steady, Some((0.0, 1.0))), "▅▅▅▅");
        assert_eq!(sparkline(&steady, None), "▁█▁█");
        assert_eq!(spark_cell(Some(&steady), 2), "▅▅ 0.51");
        assert_eq!(spark_cell(Some(&steady), 0), "-");
        let out_of_range: Vec<Value> = [-1.0, 2.0].iter().map(|&x| x.into()).collect();
        assert_eq!(sparkline(&out_of_range, Some((0.0, 1.0))), "▁█");
    }

    #[test]
    fn journal_lines_carry_the_priority_on_every_line() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .fmt_fields(EscapedFields)
            .event_format(JournalFormat)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(model_id = "m1", "hook failed");
            tracing::warn!("careful");
            tracing::info!(job_id = 7, "job queued");
            tracing::debug!("two\nlines");
            tracing::trace!("fine");
            // Finding 6 of the security review: neither a field nor a hook's output line can
            // start a line of its own (at another priority) or reach the terminal raw.
            let id = "x\n<3>forged";
            tracing::info!(model_id = %id, "hook: a\u{1b}[2J\rb");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "<3>hook failed model_id=\"m1\"\n<4>careful\n<6>job queued job_id=7\n<7>two\n<7>lines\n<7>fine\n\
             <6>hook: a\\x1b[2J\\rb model_id=x\\n<3>forged\n"
        );
    }

    #[test]
    fn tables_align_on_the_widest_cell() {
        let rows = vec![
            vec!["a".to_owned(), "1".to_owned(), "x".to_owned()],
            vec!["long-name".to_owned(), "12345".to_owned(), "y".to_owned()],
        ];
        let lines = table(&["NAME", "N", "LAST"], &[false, true], &rows);
        assert_eq!(
            lines,
            [
                "NAME           N  LAST",
                "a              1  x",
                "long-name  12345  y",
            ]
        );
    }

    #[test]
    fn durations_and_sizes_read_like_a_person_wrote_them() {
        assert_eq!(human_duration(9.7), "9s");
        assert_eq!(human_duration(249.0), "4m 09s");
        assert_eq!(human_duration(7500.0), "2h 05m");
        assert_eq!(human_duration(3.0 * 86_400.0 + 4.0 * 3600.0), "3d 4h");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
