//! `visutility backtest`: recorded events replayed through the configured policies offline
//! (see [`crate::backtest`]), once per `--sweep` variant of the config; then the summary rows
//! and the lines that were not events.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::args::BacktestArgs;
use super::{config_error, render};
use crate::backtest;
use crate::config::{Config, Env};

/// Runs `backtest` with the config at `config_path` (or the one the daemon would read).
pub fn run(args: BacktestArgs, config_path: Option<&Path>, env: &Env) -> Result<ExitCode> {
    let BacktestArgs {
        events,
        summary,
        json,
        simulate,
        retrain_s,
        detail,
        skip_invalid,
        sweep,
        report,
        compare,
    } = args;
    if !(retrain_s.is_finite() && retrain_s >= 0.0) {
        bail!("--retrain-s must be a finite number >= 0, got {retrain_s}");
    }
    let config = Config::discover(config_path, env).map_err(config_error)?;
    let mut variants = vec![(String::new(), config)];
    if !sweep.is_empty() {
        let Some(path) = config_path else {
            bail!("--sweep needs --config FILE");
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        variants.clear();
        for s in &sweep {
            for (label, text) in backtest::sweep_variants(&text, s)? {
                let config = Config::from_toml(&text, env)
                    .map_err(config_error)
                    .with_context(|| format!("--sweep variant {label}"))?;
                variants.push((label, config));
            }
        }
    }
    if !compare.is_empty() {
        // The main config is a variant too, named by its file.
        if variants.len() == 1 && variants[0].0.is_empty() {
            variants[0].0 = config_path
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "default".into());
        }
        for path in &compare {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let config = Config::from_toml(&text, env)
                .map_err(config_error)
                .with_context(|| format!("--compare {}", path.display()))?;
            variants.push((path.display().to_string(), config));
        }
    }
    let several = !sweep.is_empty() || !compare.is_empty();
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
        quiet: summary || several,
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
        render::backtest_rows(&mut out, &rows, several, simulate, json)?;
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
