//! Drawing the report: the page's HTML and inline SVG from what the replay collected (lines
//! already decimated per pixel column, marks, the summary table). No decision is made here.

use super::*;

/// The page's geometry: every panel is this wide; lanes of marks, then one or two plots.
pub(super) const LEFT: u32 = 72;
pub(super) const WIDTH: u32 = LEFT + COLUMNS + 16;
pub(super) const LANE_DRIFT: u32 = 4;
pub(super) const LANE_WARNING: u32 = 18;
pub(super) const LANE_JOB: u32 = 32;
pub(super) const LANE_VERDICT: u32 = 46;
pub(super) const LANE_H: u32 = 10;
pub(super) const PLOT_TOP: u32 = 74;
pub(super) const PLOT_H: u32 = 120;
pub(super) const PLOT_GAP: u32 = 26;
pub(super) const AXIS_H: u32 = 34;

pub(super) const STYLE: &str = "\
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1000px;\
padding:0 12px;color:#1b1b1b;background:#fff}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #ddd}\
p.meta,p.how{color:#555;margin:4px 0}code{font-size:13px}\
table.summary{border-collapse:collapse;font-size:13px;margin:14px 0}\
table.summary th,table.summary td{padding:3px 8px;border-bottom:1px solid #e4e4e4;text-align:left;\
vertical-align:top}\
table.summary th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}td.first_signal{white-space:nowrap}\
figure{margin:10px 0 18px}figcaption{font-size:13px;color:#333;margin-bottom:2px}\
svg{display:block;max-width:100%;height:auto}\
svg text{font:10px system-ui,sans-serif;fill:#555}\
.frame{fill:#fafafa;stroke:#d0d0d0}.grid{stroke:#ececec}\
.metric{fill:none;stroke:#4477aa;stroke-width:1}.metric.m1{stroke:#aa3377}\
.series{fill:none;stroke:#228833;stroke-width:1.3}\
.threshold,.bound{fill:none;stroke:#ee7733;stroke-width:1.3;stroke-dasharray:5 3}\
.drift path{stroke:#cc3311;stroke-width:1.5}.warning path{stroke:#ddaa33;stroke-width:1.5}\
.jobs path{stroke:#0077bb;stroke-width:1.5;stroke-opacity:.55}\
.verdicts path{stroke-width:2.5}.verdicts .promoted{stroke:#009988}\
.verdicts .rolled_back{stroke:#ee3377}.verdicts .inconclusive{stroke:#999}\
.key{display:inline-block;width:14px;height:3px;vertical-align:middle;margin:0 4px 0 12px}";

pub(super) fn render(
    config: &Config,
    summary: &Summary,
    seen: &Collector,
    opts: &Options<'_>,
) -> String {
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
         <code>reset_on_retrain</code> applies), and one per probation verdict on a retrain \
         (<code>[models.probation]</code>: \
         <span class=\"key\" style=\"background:#009988\"></span>promoted, \
         <span class=\"key\" style=\"background:#ee3377\"></span>rolled back, \
         <span class=\"key\" style=\"background:#999\"></span>inconclusive). Hover a mark for its reason. Lines, from the \
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

pub(super) fn summary_table(h: &mut String, summary: &Summary) {
    h.push_str(
        "<table class=\"summary\"><thead><tr><th>model</th><th>policy</th><th>kind</th>\
         <th>events</th><th>signals</th><th>warnings</th><th>jobs</th><th>first signal</th>\
         <th>per 10k</th><th>decisions not run</th><th>probation</th></tr></thead><tbody>\n",
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
        // The verdicts on the retrains this policy started, one outcome a line.
        let probation = match r.probation {
            Some(v) => {
                let text: Vec<String> = [
                    ("promoted", v.promoted),
                    ("rolled&nbsp;back", v.rolled_back),
                    ("inconclusive", v.inconclusive),
                ]
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| format!("{k}&nbsp;{n}"))
                .collect();
                format!(
                    "<td class=\"probation\" data-promoted=\"{p}\" data-rolled-back=\"{b}\" \
                     data-inconclusive=\"{i}\">{text}</td>",
                    p = v.promoted,
                    b = v.rolled_back,
                    i = v.inconclusive,
                    text = if text.is_empty() {
                        "none".to_owned()
                    } else {
                        text.join("<br>")
                    },
                )
            }
            None => "<td class=\"probation\">-</td>".to_owned(),
        };
        let _ = writeln!(
            h,
            "<tr data-model-id=\"{id}\" data-policy=\"{policy}\">\
             <td class=\"model_id\"><a href=\"#model-{model_no}\">{id}</a></td>\
             <td class=\"policy\">{policy}</td><td class=\"kind\">{kind}</td>\
             <td class=\"n events\">{events}</td><td class=\"n signals\">{signals}</td>\
             <td class=\"n warnings\">{warnings}</td><td class=\"n jobs\">{jobs}</td>{first}\
             <td class=\"n per_10k\">{per}</td><td class=\"held\">{held}</td>{probation}</tr>",
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
pub(super) struct Scale {
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
pub(super) struct Tenths(i64);

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
pub(super) fn path_data(points: &[(u32, i64)]) -> String {
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

pub(super) fn line_path(
    h: &mut String,
    class: &str,
    line: &Line,
    n: u64,
    scale: Scale,
    policy: &str,
) {
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

pub(super) fn plot_frame(h: &mut String, scale: Scale, label: &str) {
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

pub(super) fn panel(h: &mut String, row: &crate::backtest::Row, p: &Panel) {
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
        (LANE_VERDICT, "probation"),
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
    marks(
        h,
        "verdicts",
        "verdict",
        &p.verdicts,
        n,
        LANE_VERDICT,
        None,
        &policy,
    );
    h.push_str("</svg></figure>\n");
}

/// One path per mark, at its event's column: a tick in its lane, or (jobs) from its lane down
/// through the plots. Signals carry `data-signal-index` (the line's `index`), jobs
/// `data-job-index` (the line's `job`) and `data-index`, verdicts `data-verdict-index` (the
/// line's `index`), `data-probation` (its outcome, also the class) and `data-job`.
#[allow(clippy::too_many_arguments)]
pub(super) fn marks(
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
        // A verdict: coloured by its outcome, and the retrain's job.
        if let Some(outcome) = m.outcomes.get(k) {
            let _ = write!(
                h,
                " class=\"{outcome}\" data-probation=\"{outcome}\" data-job=\"{number}\""
            );
        }
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
pub(super) fn count(n: u64, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// A number for people: up to four significant digits, no exponent in the usual ranges.
pub(super) fn num(v: f64) -> String {
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
pub(super) fn when(ts: f64) -> String {
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
