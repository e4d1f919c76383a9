//! Offline replay: recorded events through the configured policies, one NDJSON line per signal.
//! No socket, no hooks, no state written. It uses the same `PolicyState::observe` as the daemon.

use std::collections::HashMap;
use std::io::{BufRead, Write};

use crate::config::Config;
use crate::policy::detect::Signal;
use crate::policy::{Obs, PolicyState, StateKind, bind_states};
use crate::protocol::{self, Line};

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("cannot read the events")]
    Read(#[source] std::io::Error),
    #[error("cannot write the signals")]
    Write(#[source] std::io::Error),
}

/// What a replay saw.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub events: u64,
    pub signals: u64,
    /// Invalid lines: (1-based line number, error), reported, not replayed.
    pub rejected: Vec<(u64, String)>,
}

/// Replays `input` and writes signals to `out`. `index` is the event's 0-based line in the
/// input, so that `sed -n "$((index+1))p"` shows it even when other lines were invalid.
pub fn run(
    config: &Config,
    input: impl BufRead,
    mut out: impl Write,
) -> Result<Summary, BacktestError> {
    let mut models: HashMap<String, Vec<PolicyState>> = HashMap::new();
    let mut summary = Summary::default();
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    let mut input = input;
    let mut w = std::io::BufWriter::new(&mut out);
    loop {
        buf.clear();
        let n = input
            .read_until(b'\n', &mut buf)
            .map_err(BacktestError::Read)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let ev = match protocol::decode_line(line) {
            Ok(Line::Event(ev)) => ev,
            Ok(_) => continue,
            Err(e) => {
                summary.rejected.push((line_no, e.to_string()));
                continue;
            }
        };
        let index = line_no - 1;
        summary.events += 1;
        let Some(rule) = config.rule_for(ev.model_id) else {
            continue;
        };
        let states = models
            .entry(ev.model_id.to_owned())
            .or_insert_with(|| bind_states(&rule.policies, Vec::new()));
        // Without a `ts`, an event's time is its line index: replays are reproducible.
        let obs = Obs::from_event(&ev, index as f64);
        for (spec, state) in rule.policies.iter().zip(states.iter_mut()) {
            let fire = state.observe(spec, &obs, obs.ts);
            let mut line = |signal: &str, action: Option<&str>| {
                let mut v = serde_json::json!({
                    "index": index,
                    "model_id": ev.model_id,
                    "policy": spec.name,
                    "signal": signal,
                });
                if let Some(a) = action {
                    v["action"] = a.into();
                }
                summary.signals += 1;
                writeln!(w, "{v}")
            };
            if let Some(f) = &fire
                && f.signal == Signal::Drift
            {
                line("drift", f.action.map(|a| a.as_str())).map_err(BacktestError::Write)?;
            }
            // The warning zone as River's warning_detected reads after the update, which can
            // be true on a drift too.
            let warning = match &state.kind {
                StateKind::Detector(d) => d.warning_detected(),
                _ => false,
            };
            if warning || fire.as_ref().is_some_and(|f| f.signal == Signal::Warning) {
                line("warning", None).map_err(BacktestError::Write)?;
            }
        }
    }
    w.flush().map_err(BacktestError::Write)?;
    Ok(summary)
}
