//! `backtest --report OUT.html`: one self-contained HTML page that shows a replay, for people
//! who would rather look than read.
//!
//! The events go twice through [`super::run_observed`], the code every `backtest` runs: plainly,
//! for each policy's metric, statistic and threshold at every event and one mark per signal line
//! `backtest` prints; then as the daemon would have acted (`--simulate`), for the jobs and the
//! probations' verdicts. The input
//! is read once: a copy is spooled to an anonymous temporary file for the second pass.
//!
//! The page: a summary table on top (the `--summary` numbers, with the simulation's jobs and
//! the decisions it held), then per model and policy an inline SVG: lanes of marks (drift,
//! warning, job, probation verdict) over the metric the policy reads and, below it, the statistic it compares
//! against its threshold (a static threshold compares the metric itself: one plot, its bounds
//! drawn across). No script, no external file or font; hovering a mark shows its title.
//!
//! Decimated for drawing only: a [`Line`] keeps at most [`BUCKETS`] buckets however many
//! events it sees, each with the lowest and highest value of its events and where they were,
//! and is drawn as at most two points per pixel column, so a one-event spike stays visible and
//! 100,000 events make a path of a few kilobytes. Decisions never see the decimated values. Every
//! signal and every job gets its own mark (an element with `data-signal-index`, the signal
//! line's `index`, `data-job-index`, the job line's `job`, or `data-verdict-index`, the verdict
//! line's `index`, with `data-probation`, its outcome): the file grows by about 50 bytes
//! a signal, and the marks of a policy with more than [`TITLED`] of them carry no title.
//!
//! Every text that comes from the events or the config (model ids, policy and metric names,
//! reasons, paths) has its non-printable characters made visible ([`crate::escape`]) and is then
//! HTML-escaped ([`html`]).

mod draw;
use draw::*;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::{BacktestError, Job, Judged, Observer, Simulate, Step, Summary};
use crate::config::Config;
use crate::policy::detect::Signal;
use crate::policy::{NamedNumbers, PolicyKind, PolicySpec, Reason};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Replay(#[from] BacktestError),
    #[error("cannot keep a copy of the events for the simulation's pass")]
    Spool(#[source] std::io::Error),
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the page says besides the replay.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// The events as named on the command line (`-` for standard input), for the header.
    pub events: &'a Path,
    /// How long a job is assumed to run, in seconds of event time (`--retrain-s`).
    pub retrain_s: f64,
}

/// Pixel columns of a plot: a line is drawn as at most two points per column.
pub const COLUMNS: u32 = 880;
/// Buckets a [`Line`] keeps: twice the columns, so that each column gets at least one.
pub const BUCKETS: usize = 2 * COLUMNS as usize;
/// Marks of one kind in one policy up to which each carries a title (its reason, statistic and
/// threshold); beyond, the file would grow by a line of text per signal.
pub const TITLED: usize = 1000;

/// Replays `input` under `config`, writes the page to `out` and returns the plain replay's
/// summary, its rows carrying the simulation's `jobs` and `held`. The page is written only
/// after both passes succeeded, so a failed run leaves an earlier report as it was.
pub fn write(
    config: &Config,
    input: impl BufRead,
    out: &Path,
    opts: &Options<'_>,
) -> Result<Summary, ReportError> {
    let spool = tempfile::tempfile().map_err(ReportError::Spool)?;
    let mut tee = Tee {
        input,
        copy: BufWriter::new(spool),
        error: None,
    };
    let mut seen = Collector::default();
    let quiet = super::Options {
        quiet: true,
        ..super::Options::default()
    };
    let mut summary = super::run_observed(config, &mut tee, std::io::sink(), &quiet, &mut seen)?;
    if let Some(e) = tee.error {
        return Err(ReportError::Spool(e));
    }
    let mut copy = tee
        .copy
        .into_inner()
        .map_err(|e| ReportError::Spool(e.into_error()))?;
    copy.rewind().map_err(ReportError::Spool)?;
    let simulate = super::Options {
        simulate: Some(Simulate {
            retrain_s: opts.retrain_s,
        }),
        ..quiet
    };
    let sim = super::run_observed(
        config,
        BufReader::new(copy),
        std::io::sink(),
        &simulate,
        &mut seen,
    )?;
    // The same lines under the same config: the same rows in the same order.
    for (row, s) in summary.rows.iter_mut().zip(sim.rows) {
        debug_assert!(row.model_id == s.model_id && row.policy == s.policy);
        row.jobs = s.jobs;
        row.held = s.held;
        row.probation = s.probation;
    }
    let page = render(config, &summary, &seen, opts);
    std::fs::write(out, page).map_err(|source| ReportError::Write {
        path: out.to_owned(),
        source,
    })?;
    Ok(summary)
}

/// `s` with its non-printable characters made visible and `&`, `<`, `>`, `"` and `'` escaped,
/// so that it is text in an element or a quoted attribute value, never markup.
pub fn html(s: &str) -> Cow<'_, str> {
    let visible = crate::escape::escape_except(s, Some('\n'));
    if !visible.contains(['&', '<', '>', '"', '\'']) {
        return visible;
    }
    let mut out = String::with_capacity(visible.len() + 16);
    for c in visible.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Reads through to `input` and keeps a copy of every byte consumed, for the second pass. A
/// failed copy is kept in `error` (a `consume` cannot fail) and reported after the pass.
struct Tee<R> {
    input: R,
    copy: BufWriter<std::fs::File>,
    error: Option<std::io::Error>,
}

impl<R: BufRead> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = {
            let available = self.fill_buf()?;
            let n = available.len().min(buf.len());
            buf[..n].copy_from_slice(&available[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Tee<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.input.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if self.error.is_none() {
            // The bytes handed out by the last fill_buf, still buffered: no read happens here.
            let copied = match self.input.fill_buf() {
                Ok(buf) => self.copy.write_all(&buf[..amt.min(buf.len())]),
                Err(e) => Err(e),
            };
            self.error = copied.err();
        }
        self.input.consume(amt);
    }
}

/// A line's values, decimated as they come: at most [`BUCKETS`] buckets of `span` events each
/// (a power of two); when they run out, neighbours merge and `span` doubles.
#[derive(Debug, Clone)]
pub struct Line {
    span: u64,
    buckets: Vec<Bucket>,
}

/// The extremes of the events `id * span .. (id + 1) * span`: values, and where they were.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    id: u64,
    lo: f64,
    lo_at: u64,
    hi: f64,
    hi_at: u64,
}

impl Default for Line {
    fn default() -> Line {
        Line {
            span: 1,
            buckets: Vec::new(),
        }
    }
}

impl Line {
    /// The value at the `nth` event (increasing from call to call); non-finite values are
    /// not drawn.
    pub fn push(&mut self, nth: u64, v: f64) {
        if !v.is_finite() {
            return;
        }
        let id = nth / self.span;
        match self.buckets.last_mut() {
            Some(b) if b.id == id => b.take(v, nth),
            _ => {
                self.buckets.push(Bucket {
                    id,
                    lo: v,
                    lo_at: nth,
                    hi: v,
                    hi_at: nth,
                });
                if self.buckets.len() > BUCKETS {
                    self.halve();
                }
            }
        }
    }

    fn halve(&mut self) {
        self.span *= 2;
        let mut merged: Vec<Bucket> = Vec::with_capacity(BUCKETS / 2 + 1);
        for mut b in self.buckets.drain(..) {
            b.id /= 2;
            match merged.last_mut() {
                Some(a) if a.id == b.id => {
                    a.take(b.lo, b.lo_at);
                    a.take(b.hi, b.hi_at);
                }
                _ => merged.push(b),
            }
        }
        self.buckets = merged;
    }

    /// The lowest and highest value seen (exact: every value went through a bucket).
    pub fn range(&self) -> Option<(f64, f64)> {
        self.buckets.iter().fold(None, |r, b| {
            let (lo, hi) = r.unwrap_or((b.lo, b.hi));
            Some((lo.min(b.lo), hi.max(b.hi)))
        })
    }

    /// What to draw for a model of `n` events: per pixel column ([`column()`]) its lowest and
    /// highest value in the order they came, one point where they are equal.
    pub fn points(&self, n: u64) -> Vec<(u32, f64)> {
        let mut out: Vec<(u32, f64)> = Vec::new();
        // A column's extremes so far, as a bucket whose id is the column.
        let mut col: Option<Bucket> = None;
        let flush = |out: &mut Vec<(u32, f64)>, c: Bucket| {
            let (first, second) = c.in_order();
            out.push((c.id as u32, first.0));
            if second.0 != first.0 {
                out.push((c.id as u32, second.0));
            }
        };
        for b in &self.buckets {
            // In the order they came, so that columns only move right.
            let (first, second) = b.in_order();
            for (v, at) in [first, second] {
                let c = u64::from(column(at, n));
                match col.as_mut() {
                    Some(cb) if cb.id == c => cb.take(v, at),
                    _ => {
                        if let Some(done) = col.take() {
                            flush(&mut out, done);
                        }
                        col = Some(Bucket {
                            id: c,
                            lo: v,
                            lo_at: at,
                            hi: v,
                            hi_at: at,
                        });
                    }
                }
            }
        }
        if let Some(done) = col {
            flush(&mut out, done);
        }
        out
    }
}

impl Bucket {
    /// Takes the value at `at` into the extremes; the earlier one stays on a tie.
    fn take(&mut self, v: f64, at: u64) {
        if v < self.lo {
            (self.lo, self.lo_at) = (v, at);
        }
        if v > self.hi {
            (self.hi, self.hi_at) = (v, at);
        }
    }

    /// The extremes as (value, nth), the earlier first.
    fn in_order(&self) -> ((f64, u64), (f64, u64)) {
        let lo = (self.lo, self.lo_at);
        let hi = (self.hi, self.hi_at);
        if lo.1 <= hi.1 { (lo, hi) } else { (hi, lo) }
    }
}

/// The pixel column of the `nth` of `n` events (its centre's), in `0..COLUMNS`.
pub fn column(nth: u64, n: u64) -> u32 {
    let c = (nth as f64 + 0.5) * f64::from(COLUMNS) / n.max(1) as f64;
    (c as u32).min(COLUMNS - 1)
}

/// What the replay showed, per row of the summary (model and policy).
#[derive(Default)]
struct Collector {
    panels: Vec<Panel>,
}

struct Panel {
    kind: &'static str,
    /// A static threshold compares the metrics themselves: one plot, no statistic.
    single: bool,
    /// The metrics the policy reads (a classic static threshold reads two).
    metrics: Vec<(String, Line)>,
    /// A static threshold's bounds, drawn across its plot.
    bounds: Vec<(&'static str, f64)>,
    /// What `statistic` shows; a detector without a statistic of its own shows its estimate.
    label: &'static str,
    statistic: Line,
    threshold: Line,
    drifts: Marks,
    warnings: Marks,
    jobs: Marks,
    /// Probation verdicts, their number the retrain's job.
    verdicts: Marks,
    first_ts: f64,
    last_ts: f64,
}

/// One kind of marks of a policy: where each is, and titles while there are few.
#[derive(Default)]
struct Marks {
    /// (index, nth, number): the event's line, its place in the model, the job's number.
    at: Vec<(u64, u64, u64)>,
    titles: Vec<String>,
    /// Verdicts only: each one's outcome (`promoted`, `rolled_back`, `inconclusive`).
    outcomes: Vec<&'static str>,
}

impl Marks {
    fn push(&mut self, index: u64, nth: u64, number: u64, title: impl FnOnce() -> String) {
        self.at.push((index, nth, number));
        if self.at.len() <= TITLED {
            self.titles.push(title());
        } else if !self.titles.is_empty() {
            self.titles = Vec::new();
        }
    }

    fn title(&self, i: usize) -> Option<&str> {
        self.titles.get(i).map(String::as_str)
    }
}

impl Panel {
    fn new(spec: &PolicySpec) -> Panel {
        let (single, metrics, bounds) = match &spec.kind {
            PolicyKind::StaticThreshold {
                max_drift,
                min_accuracy,
                max,
                min,
            } => {
                let mut metrics = Vec::new();
                let mut bounds = Vec::new();
                if max.is_some() || min.is_some() {
                    metrics.push(spec.metric.clone());
                    bounds.extend(max.map(|v| ("max", v)));
                    bounds.extend(min.map(|v| ("min", v)));
                }
                if let Some(v) = max_drift {
                    metrics.push("drift_score".to_owned());
                    bounds.push(("max_drift", *v));
                }
                if let Some(v) = min_accuracy {
                    metrics.push("accuracy".to_owned());
                    bounds.push(("min_accuracy", *v));
                }
                (true, metrics, bounds)
            }
            _ => (false, vec![spec.metric.clone()], Vec::new()),
        };
        Panel {
            kind: spec.kind.kind_name(),
            single,
            metrics: metrics.into_iter().map(|m| (m, Line::default())).collect(),
            bounds,
            label: match spec.kind {
                PolicyKind::DriftWindow { .. } => "window mean",
                _ => "statistic",
            },
            statistic: Line::default(),
            threshold: Line::default(),
            drifts: Marks::default(),
            warnings: Marks::default(),
            jobs: Marks::default(),
            verdicts: Marks::default(),
            first_ts: f64::NAN,
            last_ts: f64::NAN,
        }
    }
}

/// A detector's number to show where it has no `statistic` (ADWIN's estimate, HDDM's means).
fn estimate(now: &NamedNumbers) -> Option<(&'static str, f64)> {
    ["estimate", "mean", "ewma"]
        .into_iter()
        .find_map(|k| now.get(k).map(|v| (k, v)))
}

impl Observer for Collector {
    fn step(&mut self, s: &Step<'_>) {
        if s.row >= self.panels.len() {
            // Rows are made in order, a model's all at its first event.
            self.panels.push(Panel::new(s.spec));
        }
        let Some(p) = self.panels.get_mut(s.row) else {
            return;
        };
        if s.nth == 0 {
            p.first_ts = s.obs.ts;
        }
        p.last_ts = s.obs.ts;
        for (name, line) in &mut p.metrics {
            if let Some(v) = s.obs.metric(name) {
                line.push(s.nth, v);
            }
        }
        let reason = s.fire.map(|f| &f.reason);
        let (mut statistic, mut threshold) = (None, None);
        if !p.single {
            let now = s.state.state(s.spec);
            (statistic, threshold) = crate::policy::compared(s.spec, reason, || now.clone(), s.obs);
            if statistic.is_none()
                && let Some((label, v)) = estimate(&now)
            {
                p.label = label;
                statistic = Some(v);
            }
            if let Some(v) = statistic {
                p.statistic.push(s.nth, v);
            }
            if let Some(v) = threshold {
                p.threshold.push(s.nth, v);
            }
        }
        let numbers = |title: &mut String| {
            if let Some(v) = statistic {
                let _ = write!(title, "\n{} {}", p.label, num(v));
            }
            if let Some(v) = threshold {
                let _ = write!(title, ", threshold {}", num(v));
            }
        };
        if s.drift {
            p.drifts.push(s.index, s.nth, 0, || {
                let mut t = format!("drift at #{} ({})", s.index, when(s.obs.ts));
                // A drift line comes from a drift fire: this is its reason.
                if let Some(r) = reason {
                    let _ = write!(t, "\n{r}");
                }
                numbers(&mut t);
                t
            });
        }
        if s.warning {
            p.warnings.push(s.index, s.nth, 0, || {
                let r = Reason::Detector {
                    kind: p.kind,
                    signal: Signal::Warning,
                    metric: &s.spec.metric,
                };
                let mut t = format!("warning at #{} ({})\n{r}", s.index, when(s.obs.ts));
                numbers(&mut t);
                t
            });
        }
    }

    fn job(&mut self, j: &Job<'_>) {
        let Some(p) = self.panels.get_mut(j.row) else {
            return;
        };
        p.jobs.push(j.index, j.nth, j.number, || {
            format!(
                "job {}: {} at #{} ({})\n{}",
                j.number,
                j.action,
                j.index,
                when(j.ts),
                j.reason
            )
        });
    }

    fn verdict(&mut self, v: &Judged<'_>) {
        let Some(p) = self.panels.get_mut(v.row) else {
            return;
        };
        let outcome = v.outcome.as_str();
        p.verdicts.outcomes.push(outcome);
        p.verdicts.push(v.index, v.nth, v.job, || {
            let mut t = format!(
                "job {} on probation: {outcome} at #{} ({})",
                v.job,
                v.index,
                when(v.ts)
            );
            if let Some(c) = v.cause {
                let _ = write!(t, ", {}", c.as_str());
            }
            if v.escalation {
                t.push_str(", escalated");
            }
            match (v.z, v.z_threshold) {
                (Some(z), Some(c)) => {
                    let _ = write!(t, "\nz {} against {}", num(z), num(c));
                }
                (Some(z), None) => {
                    let _ = write!(t, "\nz {}", num(z));
                }
                _ => {}
            }
            for (name, s) in [("baseline", &v.baseline), ("candidate", &v.candidate)] {
                let _ = write!(
                    t,
                    "\n{name} {}: n {}, mean {}, std {}",
                    v.metric,
                    s.n,
                    num(s.mean),
                    num(s.std())
                );
            }
            t
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_markup_and_shows_control_characters() {
        assert_eq!(
            html("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(html("a\u{1b}[2Jb"), "a\\x1b[2Jb");
        assert!(matches!(html("plain"), Cow::Borrowed("plain")));
    }

    /// 100,000 events in at most BUCKETS buckets, at most two points per column, and a
    /// one-event spike still drawn at its column.
    #[test]
    fn decimation_keeps_a_spike_and_stays_small() {
        let n = 100_000u64;
        let mut line = Line::default();
        for i in 0..n {
            let v = if i == 73_421 {
                50.0
            } else {
                (i % 7) as f64 * 0.1
            };
            line.push(i, v);
        }
        assert!(line.buckets.len() <= BUCKETS, "{}", line.buckets.len());
        assert_eq!(line.range(), Some((0.0, 50.0)));
        let points = line.points(n);
        assert!(points.len() <= 2 * COLUMNS as usize, "{}", points.len());
        let spike = column(73_421, n);
        assert!(points.contains(&(spike, 50.0)), "{points:?}");
        // Columns only move right.
        assert!(points.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    /// Few events: one point each, in order.
    #[test]
    fn a_short_line_is_drawn_point_by_point() {
        let mut line = Line::default();
        for (i, v) in [3.0, 1.0, f64::NAN, 2.0].into_iter().enumerate() {
            line.push(i as u64, v);
        }
        let points = line.points(4);
        assert_eq!(
            points,
            [
                (column(0, 4), 3.0),
                (column(1, 4), 1.0),
                (column(3, 4), 2.0)
            ]
        );
    }

    #[test]
    fn paths_leave_out_the_middle_of_level_runs() {
        let d = path_data(&[(1, 100), (2, 100), (3, 100), (3, 205), (4, 7)]);
        assert_eq!(d, "M1 10H3V20.5L4 0.7");
    }

    #[test]
    fn times_and_numbers_read_as_people_write_them() {
        assert_eq!(when(1_800_000_000.0), "2027-01-15 08:00:00");
        assert_eq!(when(12.0), "12");
        assert_eq!(num(0.123456), "0.1235");
        assert_eq!(num(1234.6), "1235");
        assert_eq!(num(2.5e-5), "2.500e-5");
    }
}
