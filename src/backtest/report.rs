//! `backtest --report OUT.html`: one self-contained HTML page that shows a replay, for people
//! who would rather look than read.
//!
//! The events go twice through [`super::run_observed`], the code every `backtest` runs: plainly,
//! for each policy's metric, statistic and threshold at every event and one mark per signal line
//! `backtest` prints; then as the daemon would have acted (`--simulate`), for the jobs. The input
//! is read once: a copy is spooled to an anonymous temporary file for the second pass.
//!
//! The page: a summary table on top (the `--summary` numbers, with the simulation's jobs and
//! the decisions it held), then per model and policy an inline SVG: lanes of marks (drift,
//! warning, job) over the metric the policy reads and, below it, the statistic it compares
//! against its threshold (a static threshold compares the metric itself: one plot, its bounds
//! drawn across). No script, no external file or font; hovering a mark shows its title.
//!
//! Decimated for drawing only: a [`Line`] keeps at most [`BUCKETS`] buckets however many
//! events it sees, each with the lowest and highest value of its events and where they were,
//! and is drawn as at most two points per pixel column, so a one-event spike stays visible and
//! 100,000 events make a path of a few kilobytes. Decisions never see the decimated values. Every
//! signal and every job gets its own mark (an element with `data-signal-index`, the signal
//! line's `index`, or `data-job-index`, the job line's `job`): the file grows by about 50 bytes
//! a signal, and the marks of a policy with more than [`TITLED`] of them carry no title.
//!
//! Every text that comes from the events or the config (model ids, policy and metric names,
//! reasons, paths) has its non-printable characters made visible ([`crate::escape`]) and is then
//! HTML-escaped ([`html`]).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::{BacktestError, Job, Observer, Simulate, Step, Summary};
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
    first_ts: f64,
    last_ts: f64,
}

/// One kind of marks of a policy: where each is, and titles while there are few.
#[derive(Default)]
struct Marks {
    /// (index, nth, number): the event's line, its place in the model, the job's number.
    at: Vec<(u64, u64, u64)>,
    titles: Vec<String>,
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
}

/// The page's geometry: every panel is this wide; lanes of marks, then one or two plots.
const LEFT: u32 = 72;
const WIDTH: u32 = LEFT + COLUMNS + 16;
const LANE_DRIFT: u32 = 4;
const LANE_WARNING: u32 = 18;
const LANE_JOB: u32 = 32;
const LANE_H: u32 = 10;
const PLOT_TOP: u32 = 60;
const PLOT_H: u32 = 120;
const PLOT_GAP: u32 = 26;
const AXIS_H: u32 = 34;

const STYLE: &str = "\
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1000px;\
padding:0 12px;color:#1b1b1b;background:#fff}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #ddd}\
p.meta,p.how{color:#555;margin:4px 0}code{font-size:13px}\
table.summary{border-collapse:collapse;font-size:13px;margin:14px 0}\
table.summary th,table.summary td{padding:3px 8px;border-bottom:1px solid #e4e4e4;text-align:left;\
vertical-align:top}\
table.summary th{background:#f3f3f3;white-space:nowrap}td.n{text-align:right;font-variant-numeric:tabular-nums}td.first_signal{white-space:nowrap}\
figure{margin:10px 0 18px}figcaption{font-size:13px;color:#333;margin-bottom:2px}\
svg{display:block;max-width:100%;height:auto}\
svg text{font:10px system-ui,sans-serif;fill:#555}\
.frame{fill:#fafafa;stroke:#d0d0d0}.grid{stroke:#ececec}\
.metric{fill:none;stroke:#4477aa;stroke-width:1}.metric.m1{stroke:#aa3377}\
.series{fill:none;stroke:#228833;stroke-width:1.3}\
.threshold,.bound{fill:none;stroke:#ee7733;stroke-width:1.3;stroke-dasharray:5 3}\
.drift path{stroke:#cc3311;stroke-width:1.5}.warning path{stroke:#ddaa33;stroke-width:1.5}\
.jobs path{stroke:#0077bb;stroke-width:1.5;stroke-opacity:.55}\
.key{display:inline-block;width:14px;height:3px;vertical-align:middle;margin:0 4px 0 12px}";

fn render(config: &Config, summary: &Summary, seen: &Collector, opts: &Options<'_>) -> String {
    let mut h = String::with_capacity(256 * 1024);
    let events = opts.events.display().to_string();
    let config_name = config
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".to_owned());
    let models = {
        let mut ids: Vec<&str> = summary.rows.iter().map(|r| r.model_id.as_str()).collect();
        ids.dedup();
        ids.len()
    };
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>visutility backtest: {title}</title><style>{STYLE}</style></head><body>\n\
         <h1>Backtest report</h1>\n\
         <p class=\"meta\">events <code>{events}</code> · config <code>{config}</code> · \
         {n} events, {models} model{s} · jobs simulated with a retrain of {retrain} s · times \
         UTC · visutility {version}</p>\n",
        title = html(&events),
        events = html(&events),
        config = html(&config_name),
        n = summary.events,
        s = if models == 1 { "" } else { "s" },
        retrain = num(opts.retrain_s),
        version = env!("CARGO_PKG_VERSION"),
    );
    if !summary.rejected.is_empty() {
        let _ = writeln!(
            h,
            "<p class=\"meta\">{} invalid line{} not replayed (the first: line {}).</p>",
            summary.rejected.len(),
            if summary.rejected.len() == 1 { "" } else { "s" },
            summary.rejected[0].0
        );
    }
    h.push_str(
        "<p class=\"how\">Marks: one per line <code>backtest</code> prints \
         (<span class=\"key\" style=\"background:#cc3311\"></span>drift, \
         <span class=\"key\" style=\"background:#ddaa33\"></span>warning), and one per job \
         <span class=\"key\" style=\"background:#0077bb\"></span>the daemon would have \
         started (<code>--simulate</code>: warm-up, one decision per action per batch, \
         cooldown, budget, loop guard; a job is assumed to succeed, then \
         <code>reset_on_retrain</code> applies). Hover a mark for its reason. Lines, from the \
         plain replay (no job resets them): \
         <span class=\"key\" style=\"background:#4477aa\"></span>the metric, \
         <span class=\"key\" style=\"background:#228833\"></span>what the policy compares, \
         <span class=\"key\" style=\"background:#ee7733\"></span>its threshold; drawn as \
         the lowest and highest value per pixel column, while counts and marks are exact.</p>\n",
    );
    if summary.rows.is_empty() {
        h.push_str("<p>No event matched a <code>[[models]]</code> rule.</p>\n</body></html>\n");
        return h;
    }
    summary_table(&mut h, summary);
    let mut model_no = 0usize;
    let mut i = 0usize;
    while i < summary.rows.len() {
        let model = &summary.rows[i].model_id;
        let end = summary.rows[i..]
            .iter()
            .position(|r| &r.model_id != model)
            .map_or(summary.rows.len(), |k| i + k);
        let _ = writeln!(
            h,
            "<section class=\"model\" id=\"model-{model_no}\" data-model-id=\"{id}\">\
             <h2>{id}</h2>",
            id = html(model)
        );
        for r in i..end {
            if let Some(p) = seen.panels.get(r) {
                panel(&mut h, &summary.rows[r], p);
            }
        }
        h.push_str("</section>\n");
        model_no += 1;
        i = end;
    }
    h.push_str("</body></html>\n");
    h
}

fn summary_table(h: &mut String, summary: &Summary) {
    h.push_str(
        "<table class=\"summary\"><thead><tr><th>model</th><th>policy</th><th>kind</th>\
         <th>events</th><th>signals</th><th>warnings</th><th>jobs</th><th>first signal</th>\
         <th>per 10k</th><th>decisions not run</th></tr></thead><tbody>\n",
    );
    let mut model_no = 0usize;
    for (k, r) in summary.rows.iter().enumerate() {
        if k > 0 && summary.rows[k - 1].model_id != r.model_id {
            model_no += 1;
        }
        let first = match r.first_signal {
            Some((i, ts)) => format!(
                "<td class=\"first_signal\" data-index=\"{i}\" data-ts=\"{ts}\">#{i} ({})</td>",
                when(ts)
            ),
            None => "<td class=\"first_signal\">-</td>".to_owned(),
        };
        let held: Vec<String> = r.held.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            h,
            "<tr data-model-id=\"{id}\" data-policy=\"{policy}\">\
             <td class=\"model_id\"><a href=\"#model-{model_no}\">{id}</a></td>\
             <td class=\"policy\">{policy}</td><td class=\"kind\">{kind}</td>\
             <td class=\"n events\">{events}</td><td class=\"n signals\">{signals}</td>\
             <td class=\"n warnings\">{warnings}</td><td class=\"n jobs\">{jobs}</td>{first}\
             <td class=\"n per_10k\">{per}</td><td class=\"held\">{held}</td></tr>",
            id = html(&r.model_id),
            policy = html(&r.policy),
            kind = r.kind,
            events = r.events,
            signals = r.signals,
            warnings = r.warnings,
            jobs = r.jobs.unwrap_or(0),
            // As `--summary --json` rounds it.
            per = (r.per_10k() * 100.0).round() / 100.0,
            held = if held.is_empty() {
                "-".to_owned()
            } else {
                held.join(", ")
            },
        );
    }
    h.push_str("</tbody></table>\n");
}

/// A plot's vertical scale: values in `lo..=hi` to `top..top + PLOT_H`, in tenths of a pixel.
#[derive(Clone, Copy)]
struct Scale {
    top: u32,
    lo: f64,
    hi: f64,
}

impl Scale {
    fn new(top: u32, ranges: impl IntoIterator<Item = (f64, f64)>) -> Scale {
        let (lo, hi) = ranges
            .into_iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), (a, b)| {
                (l.min(a), h.max(b))
            });
        let (lo, hi) = if lo > hi {
            (0.0, 1.0)
        } else if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
            (lo - 0.5, hi + 0.5)
        } else {
            let pad = (hi - lo) * 0.06;
            (lo - pad, hi + pad)
        };
        Scale { top, lo, hi }
    }

    /// Tenths of a pixel from the page's top.
    fn y(&self, v: f64) -> i64 {
        let f = ((self.hi - v) / (self.hi - self.lo)).clamp(0.0, 1.0);
        ((f64::from(self.top) + f * f64::from(PLOT_H)) * 10.0).round() as i64
    }
}

/// Tenths of a pixel as SVG writes them.
struct Tenths(i64);

impl std::fmt::Display for Tenths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (sign, t) = if self.0 < 0 {
            ("-", -self.0)
        } else {
            ("", self.0)
        };
        if t % 10 == 0 {
            write!(f, "{sign}{}", t / 10)
        } else {
            write!(f, "{sign}{}.{}", t / 10, t % 10)
        }
    }
}

/// An SVG path through `points` (x in pixels, y in tenths), short: the middle of a horizontal
/// run is left out, and `H`/`V` are used where a coordinate repeats.
fn path_data(points: &[(u32, i64)]) -> String {
    let mut d = String::with_capacity(points.len() * 12);
    let mut prev: Option<(u32, i64)> = None;
    for (k, &(x, y)) in points.iter().enumerate() {
        let level = |j: usize| points.get(j).is_some_and(|p| p.1 == y);
        if k > 0 && level(k - 1) && level(k + 1) {
            continue;
        }
        let _ = match prev {
            None => write!(d, "M{x} {}", Tenths(y)),
            Some((px, _)) if px == x => write!(d, "V{}", Tenths(y)),
            Some((_, py)) if py == y => write!(d, "H{x}"),
            Some(_) => write!(d, "L{x} {}", Tenths(y)),
        };
        prev = Some((x, y));
    }
    d
}

fn line_path(h: &mut String, class: &str, line: &Line, n: u64, scale: Scale, policy: &str) {
    let points: Vec<(u32, i64)> = line
        .points(n)
        .into_iter()
        .map(|(c, v)| (LEFT + c, scale.y(v)))
        .collect();
    if points.is_empty() && class != "series" {
        return;
    }
    let _ = write!(
        h,
        "<path class=\"{class}\" data-policy=\"{policy}\" d=\"{}\"/>",
        path_data(&points)
    );
}

fn plot_frame(h: &mut String, scale: Scale, label: &str) {
    let bottom = scale.top + PLOT_H;
    let _ = write!(
        h,
        "<rect class=\"frame\" x=\"{LEFT}\" y=\"{top}\" width=\"{COLUMNS}\" height=\"{PLOT_H}\"/>",
        top = scale.top
    );
    for q in 1..4 {
        let x = LEFT + COLUMNS * q / 4;
        let _ = write!(
            h,
            "<path class=\"grid\" d=\"M{x} {top}V{bottom}\"/>",
            top = scale.top
        );
    }
    let mid = (scale.lo + scale.hi) / 2.0;
    for v in [scale.hi, mid, scale.lo] {
        let _ = write!(
            h,
            "<text x=\"{x}\" y=\"{y}\" text-anchor=\"end\">{v}</text>",
            x = LEFT - 5,
            y = Tenths(scale.y(v) + 35),
            v = num(v)
        );
    }
    let _ = write!(
        h,
        "<text x=\"{LEFT}\" y=\"{y}\">{label}</text>",
        y = scale.top - 4
    );
}

fn panel(h: &mut String, row: &super::Row, p: &Panel) {
    let n = row.events;
    let policy = html(&row.policy);
    let plots = if p.single { 1 } else { 2 };
    let bottom = PLOT_TOP + plots * PLOT_H + (plots - 1) * PLOT_GAP;
    let height = bottom + AXIS_H;
    let metric_names: Vec<String> = p
        .metrics
        .iter()
        .map(|(m, _)| html(m).into_owned())
        .collect();
    let _ = write!(
        h,
        "<figure class=\"policy\" data-policy=\"{policy}\"><figcaption><b>{policy}</b> \
         {kind} on {metrics} · {events} · {signals} · {warnings} · {jobs}</figcaption>\n\
         <svg class=\"panel\" viewBox=\"0 0 {WIDTH} {height}\" \
         width=\"{WIDTH}\" height=\"{height}\" role=\"img\">",
        kind = p.kind,
        metrics = metric_names.join(" and "),
        events = count(n, "event"),
        signals = count(row.signals, "signal"),
        warnings = count(row.warnings, "warning"),
        jobs = count(row.jobs.unwrap_or(0), "job"),
    );
    for (y, label) in [
        (LANE_DRIFT, "drift"),
        (LANE_WARNING, "warning"),
        (LANE_JOB, "jobs"),
    ] {
        let _ = write!(
            h,
            "<text x=\"{x}\" y=\"{y}\" text-anchor=\"end\">{label}</text>",
            x = LEFT - 5,
            y = y + 9
        );
    }
    // The metric (a static threshold's only plot, its first metric the series it compares).
    let metric_scale = Scale::new(
        PLOT_TOP,
        p.metrics
            .iter()
            .filter_map(|(_, l)| l.range())
            .chain(p.bounds.iter().map(|&(_, v)| (v, v))),
    );
    let label = match (p.single, metric_names.as_slice()) {
        (true, [one]) => format!("{one} against its bounds"),
        (true, [first, second]) => {
            format!("{first} (green) and {second} (purple) against their bounds")
        }
        _ => metric_names.join(", "),
    };
    plot_frame(h, metric_scale, &label);
    for (k, (_, line)) in p.metrics.iter().enumerate() {
        let class = match (p.single, k) {
            (true, 0) => "series",
            (_, 0) => "metric",
            _ => "metric m1",
        };
        line_path(h, class, line, n, metric_scale, &policy);
    }
    for &(name, v) in &p.bounds {
        let y = Tenths(metric_scale.y(v));
        let _ = write!(
            h,
            "<path class=\"bound\" d=\"M{LEFT} {y}h{COLUMNS}\"><title>{name} {}</title></path>",
            num(v)
        );
    }
    if !p.single {
        let top = PLOT_TOP + PLOT_H + PLOT_GAP;
        let scale = Scale::new(
            top,
            [p.statistic.range(), p.threshold.range()]
                .into_iter()
                .flatten(),
        );
        let label = if p.threshold.range().is_some() {
            format!("{} against its threshold", p.label)
        } else {
            format!("{} (no threshold: the detector tests its window)", p.label)
        };
        plot_frame(h, scale, &label);
        line_path(h, "threshold", &p.threshold, n, scale, &policy);
        line_path(h, "series", &p.statistic, n, scale, &policy);
    }
    // The x axis: the model's events, and the time of the first and the last.
    for q in 0..=4u64 {
        let x = LEFT + COLUMNS * q as u32 / 4;
        let anchor = match q {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            h,
            "<text x=\"{x}\" y=\"{y}\" text-anchor=\"{anchor}\">{v}</text>",
            y = bottom + 12,
            v = n * q / 4
        );
    }
    let _ = write!(
        h,
        "<text x=\"{LEFT}\" y=\"{y}\">{first}</text>\
         <text x=\"{x}\" y=\"{y}\" text-anchor=\"middle\">events of the model</text>\
         <text x=\"{right}\" y=\"{y}\" text-anchor=\"end\">{last}</text>",
        y = bottom + 26,
        x = LEFT + COLUMNS / 2,
        right = LEFT + COLUMNS,
        first = when(p.first_ts),
        last = when(p.last_ts),
    );
    marks(
        h,
        "signals drift",
        "signal",
        &p.drifts,
        n,
        LANE_DRIFT,
        None,
        &policy,
    );
    marks(
        h,
        "signals warning",
        "signal",
        &p.warnings,
        n,
        LANE_WARNING,
        None,
        &policy,
    );
    marks(
        h,
        "jobs",
        "job",
        &p.jobs,
        n,
        LANE_JOB,
        Some(bottom),
        &policy,
    );
    h.push_str("</svg></figure>\n");
}

/// One path per mark, at its event's column: a tick in its lane, or (jobs) from its lane down
/// through the plots. Signals carry `data-signal-index` (the line's `index`), jobs
/// `data-job-index` (the line's `job`) and `data-index`.
#[allow(clippy::too_many_arguments)]
fn marks(
    h: &mut String,
    class: &str,
    what: &str,
    m: &Marks,
    n: u64,
    lane: u32,
    down_to: Option<u32>,
    policy: &str,
) {
    let _ = write!(h, "<g class=\"{class}\" data-policy=\"{policy}\">");
    for (k, &(index, nth, number)) in m.at.iter().enumerate() {
        let x = LEFT + column(nth, n);
        let _ = match down_to {
            Some(bottom) => write!(
                h,
                "<path d=\"M{x} {lane}V{bottom}\" data-job-index=\"{number}\" data-index=\"{index}\""
            ),
            None => write!(
                h,
                "<path d=\"M{x} {lane}v{LANE_H}\" data-{what}-index=\"{index}\""
            ),
        };
        match m.title(k) {
            Some(t) => {
                let _ = write!(h, "><title>{}</title></path>", html(t));
            }
            None => h.push_str("/>"),
        }
    }
    h.push_str("</g>");
}

/// `n` things, in the plural unless one.
fn count(n: u64, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// A number for people: up to four significant digits, no exponent in the usual ranges.
fn num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v.is_finite() {
            "0".into()
        } else {
            v.to_string()
        };
    }
    let a = v.abs();
    if !(1e-3..1e7).contains(&a) {
        return format!("{v:.3e}");
    }
    let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// An event's time: its UTC date and time (the page says UTC once) when `ts` reads as one (2001 to 2100), else the number
/// (an event without `ts` takes its line index).
fn when(ts: f64) -> String {
    if !(1e9..4.1e9).contains(&ts) {
        return num(ts);
    }
    let secs = ts.floor() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
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
