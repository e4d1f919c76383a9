//! How the CLI shows things to people: aligned tables, sparklines, durations and sizes as a
//! person would write them, and the tables of `status`, `models`, `history` and
//! `backtest --summary`, `explain`. Every cell is escaped: what the daemon sends never reaches the
//! terminal raw.

use std::io::Write;

use anyhow::Result;
use serde_json::Value;

use crate::backtest;
use crate::control::api::{ExplainInfo, JobInfo, ModelInfo, Outcome, Status};

/// Lines of a table whose columns are as wide as their widest cell; `right` marks the
/// columns aligned right (numbers). The last column is not padded.
fn table(header: &[&str], right: &[bool], rows: &[Vec<String>]) -> Vec<String> {
    // Cells come from the daemon (ids, policy names, notes): never raw control characters.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| crate::escape::escape(c).into_owned())
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
            format!("{} ago", human_duration(crate::clock::wall() - t))
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

/// `status`: one line per aspect.
pub fn status(out: &mut impl Write, s: &Status) -> Result<()> {
    let mut rows = vec![
        ("version", s.version.clone()),
        ("uptime", human_duration(s.uptime_s)),
        (
            "models",
            format!("{} known, {} loaded", s.models, s.models_loaded),
        ),
        (
            "events/s",
            format!("{:.1} over the last minute", s.events_per_second),
        ),
        (
            "events",
            format!(
                "{} accepted, {} lines rejected",
                s.events_accepted, s.lines_rejected
            ),
        ),
        ("connections", format!("{} open", s.connections)),
        (
            "jobs",
            format!("{} running, {} queued", s.jobs_running, s.jobs_queued),
        ),
        (
            "probation",
            format!(
                "{} model{} on probation",
                s.models_on_probation,
                if s.models_on_probation == 1 { "" } else { "s" }
            ),
        ),
        (
            "paused",
            if s.paused.is_empty() {
                "none".into()
            } else {
                s.paused.join(", ")
            },
        ),
        (
            "store",
            format!("{} in {}", human_bytes(s.store_bytes), s.state_dir),
        ),
    ];
    if let Some(size) = s.clock.last_jump_s {
        rows.push((
            "clock",
            format!(
                "{} wall clock jump{} seen; the last {} {} (status --json: when)",
                s.clock.jumps,
                if s.clock.jumps == 1 { "" } else { "s" },
                human_duration(size.abs().round()),
                if size < 0.0 { "back" } else { "ahead" },
            ),
        ));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        writeln!(out, "{k:<width$}  {}", crate::escape::escape(&v))?;
    }
    // Only when there are any: models whose stored state does not decode.
    if !s.store.undecodable_models.is_empty() {
        writeln!(
            out,
            "undecodable models: {} (`visutility reset` or `forget` them)",
            crate::escape::escape(&s.store.undecodable_models.join(", "))
        )?;
    }
    Ok(())
}

/// `backtest --summary` / `--sweep`: one row per (variant,) model and policy, as a table or
/// a JSON array.
pub fn backtest_rows(
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
fn sparkline(xs: &[f64], scale: Option<(f64, f64)>) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
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
fn spark_cell(values: &[f64], width: usize) -> String {
    let values = &values[values.len().saturating_sub(width)..];
    match values.last() {
        Some(last) if width > 0 => format!("{} {last:.2}", sparkline(values, Some((0.0, 1.0)))),
        _ => "-".into(),
    }
}

/// `models`: one row per model, and under each one line per policy.
pub fn models(out: &mut impl Write, models: &[ModelInfo], spark_width: usize) -> Result<()> {
    if models.is_empty() {
        writeln!(out, "no models yet")?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            let last = m
                .last_decision
                .as_ref()
                .map(|d| format!("{} by {}, {}", d.action, d.policy, ago(Some(d.at))))
                .unwrap_or_else(|| "-".into());
            vec![
                m.model_id.clone(),
                m.events.to_string(),
                ago(Some(m.last_seen)),
                m.decisions.to_string(),
                if m.paused { "yes" } else { "no" }.into(),
                spark_cell(&m.recent_drift, spark_width),
                spark_cell(&m.recent_accuracy, spark_width),
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
    let policies = |m: &ModelInfo| -> Vec<(String, String)> {
        m.policies
            .iter()
            .map(|p| {
                let label = if p.name == p.kind {
                    p.name.clone()
                } else {
                    format!("{} ({})", p.name, p.kind)
                };
                (
                    crate::escape::escape(&label).into_owned(),
                    crate::escape::escape(&p.summary).into_owned(),
                )
            })
            .collect()
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
        if let Some(p) = &m.probation {
            writeln!(
                out,
                "    on probation: retrain job {}, {} {}/{} values (baseline mean {}, candidate mean {}), z {} (next look's boundary {})",
                p.job_id,
                crate::escape::escape(&p.metric),
                p.candidate.n,
                p.events,
                number(Some(p.baseline.mean)),
                number((p.candidate.n > 0).then_some(p.candidate.mean)),
                number(p.z),
                number(p.z_threshold),
            )?;
        }
    }
    Ok(())
}

/// `history`: one row per job.
pub fn history(out: &mut impl Write, jobs: &[JobInfo]) -> Result<()> {
    if jobs.is_empty() {
        writeln!(out, "no jobs")?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let took = match (j.started, j.ended) {
                (Some(s), Some(e)) => human_duration(e - s),
                _ => "-".into(),
            };
            // The reason can be long (a detector's statistic, the loop guard's why): cut.
            let reason: String = j.reason.chars().take(60).collect();
            vec![
                j.job_id.to_string(),
                j.model_id.clone(),
                j.action.clone(),
                j.policy.clone(),
                j.state.clone(),
                j.attempts.to_string(),
                j.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                ago(Some(j.created)),
                took,
                reason,
                match &j.probation {
                    Some(p) => {
                        let cause = p
                            .cause
                            .as_deref()
                            .map(|c| format!(" ({c})"))
                            .unwrap_or_default();
                        if j.note.is_empty() {
                            format!("probation: {}{cause}", p.state)
                        } else {
                            format!("probation: {}{cause}; {}", p.state, j.note)
                        }
                    }
                    None => j.note.clone(),
                },
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

/// A statistic or threshold: four decimals at most, a power of ten for the very large and the
/// very small, `-` for none.
fn number(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v != 0.0 && v.is_finite() && !(1e-3..1e6).contains(&v.abs()) => {
            format!("{v:.3e}")
        }
        Some(v) => {
            let s = format!("{v:.4}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            if s == "-0" { "0".into() } else { s.to_owned() }
        }
    }
}

/// `explain`: one row per entry of the model's decision log, newest first.
pub fn explain(out: &mut impl Write, entries: &[ExplainInfo]) -> Result<()> {
    if entries.is_empty() {
        writeln!(out, "no decisions")?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let outcome = match (&e.outcome, e.job_id) {
                (Outcome::Job(id), _) => format!("job {id}"),
                (Outcome::NoJob(why), Some(id)) => format!("{why} (job {id})"),
                (Outcome::NoJob(why), None) => why.clone(),
            };
            // As in `history`: a detector's reason or the loop guard's why can be long.
            let reason: String = e.reason.chars().take(60).collect();
            vec![
                ago(Some(e.at)),
                e.policy.clone(),
                e.action.clone(),
                number(e.statistic),
                number(e.threshold),
                outcome,
                e.count.to_string(),
                reason,
                e.note.clone(),
            ]
        })
        .collect();
    for line in table(
        &[
            "AT",
            "POLICY",
            "ACTION",
            "STATISTIC",
            "THRESHOLD",
            "OUTCOME",
            "COUNT",
            "REASON",
            "NOTE",
        ],
        &[false, false, false, true, true, false, true],
        &rows,
    ) {
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_shows_each_outcome_and_escapes_what_the_daemon_sent() {
        let entry = |outcome: Outcome, job_id: Option<u64>, count: u64| ExplainInfo {
            seq: 1,
            kind: "decision".into(),
            at: 0.0,
            first_at: 0.0,
            count,
            policy: "mean\x1b[2J".into(),
            action: "full".into(),
            statistic: Some(0.712345),
            threshold: Some(0.5),
            reason: "mean of the last 10 drift_score values 0.712345 > threshold 0.5".into(),
            outcome,
            job_id,
            note: String::new(),
            event: None,
        };
        let mut out = Vec::new();
        explain(
            &mut out,
            &[
                entry(Outcome::NoJob("cooldown".into()), None, 1999),
                entry(Outcome::NoJob("absorbed".into()), Some(7), 2),
                entry(Outcome::Job(7), Some(7), 1),
            ],
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("AT  POLICY"), "{text}");
        assert!(
            lines[1].contains("0.7123") && lines[1].contains("cooldown"),
            "{text}"
        );
        assert!(lines[1].contains(" 1999 "), "{text}");
        assert!(lines[2].contains("absorbed (job 7)"), "{text}");
        assert!(lines[3].contains("job 7"), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        let mut out = Vec::new();
        explain(&mut out, &[]).unwrap();
        assert_eq!(out, b"no decisions\n");
    }

    #[test]
    fn statistics_read_as_numbers() {
        assert_eq!(number(None), "-");
        assert_eq!(number(Some(0.5)), "0.5");
        assert_eq!(number(Some(0.712345)), "0.7123");
        assert_eq!(number(Some(-0.0)), "0");
        assert_eq!(number(Some(12.0)), "12");
        assert_eq!(number(Some(1e-9)), "1.000e-9");
        assert_eq!(number(Some(2.5e7)), "2.500e7");
    }

    /// Issue 13.4: on the fixed [0, 1] scale a steady model looks steady (the old min-max
    /// scale drew 0.50 and 0.51 as the lowest and highest bars); `--width` keeps the latest.
    #[test]
    fn sparklines_use_the_fixed_scale_and_the_width() {
        let steady = [0.5, 0.51, 0.5, 0.51];
        assert_eq!(sparkline(&steady, Some((0.0, 1.0))), "▅▅▅▅");
        assert_eq!(sparkline(&steady, None), "▁█▁█");
        assert_eq!(spark_cell(&steady, 2), "▅▅ 0.51");
        assert_eq!(spark_cell(&steady, 0), "-");
        assert_eq!(spark_cell(&[], 8), "-");
        assert_eq!(sparkline(&[-1.0, 2.0], Some((0.0, 1.0))), "▁█");
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
