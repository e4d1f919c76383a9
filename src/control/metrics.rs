//! The daemon's own metrics in the Prometheus text exposition format (version 0.0.4).
//!
//! Two steps, so the format can be tested without a daemon: [`snapshot`] gathers the numbers
//! from the running actors into a [`Snapshot`], and [`render`] turns a snapshot into text, a
//! pure function. Every family has `# HELP` and `# TYPE`; counters end in `_total`; times are
//! seconds and sizes bytes. The same text goes to `visutility metrics` and, when
//! `[metrics] textfile` is set, to a file for node_exporter's textfile collector, written by
//! [`write_textfile`] so that a scrape never sees half a file, and, when `[metrics] listen` is
//! set, over HTTP by [`super::http`].
//!
//! Label sets stay bounded, because a fleet multiplies every series by its number of hosts:
//! only the `max_model_series` most recently seen models get series of their own; the others
//! are summed under `model_id="_other"` and counted by `visutility_models_unlisted`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::ControlCtx;
use crate::command::GetStatus;
use crate::command::stats::DurationHistogram;
use crate::protocol::ErrorCode;

/// Job outcomes that always have a series (zero until one happens), so alerts on them work
/// from the first scrape.
const OUTCOMES: [&str; 5] = [
    "succeeded",
    "failed",
    "interrupted",
    "superseded",
    "skipped",
];

/// Everything the exposition shows, gathered at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub version: String,
    pub uptime_s: f64,
    /// Wall clock jumps seen since start.
    pub clock_jumps: u64,
    pub events_accepted: u64,
    /// Rejected lines by error code, every code listed.
    pub rejected: Vec<(&'static str, u64)>,
    pub connections_open: u64,
    pub connections_total: u64,
    /// Ingest connections closed at once, by reason (`too_many_connections`,
    /// `too_many_connections_per_uid`, `permission_denied`).
    pub connections_refused: Vec<(&'static str, u64)>,
    /// Error replies dropped because their client did not read them.
    pub replies_dropped: u64,
    pub control_refused: u64,
    pub store_bytes: u64,
    pub store: crate::store::StoreStats,
    /// The store's latched error, if any (`status` shows it; the metrics show 0 or 1).
    pub store_healthy: bool,
    pub models: Vec<ModelMetrics>,
    /// How many models get series of their own (`[metrics] max_model_series`).
    pub max_model_series: usize,
    /// Jobs that reached an end state since start, by outcome.
    pub jobs: Vec<(String, u64)>,
    /// The same jobs by `(action, outcome)`.
    pub jobs_by_action: Vec<(String, String, u64)>,
    pub jobs_running: u64,
    pub jobs_queued: u64,
    pub hook_durations: DurationHistogram,
    /// Probations ended since start, by outcome.
    pub probations: Vec<(&'static str, u64)>,
    pub models_on_probation: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelMetrics {
    pub model_id: String,
    pub events: u64,
    pub last_seen: f64,
    pub drift_score: Option<f64>,
    pub accuracy: Option<f64>,
    pub paused: bool,
    /// `(policy, action, count)` since start.
    pub decisions: Vec<(String, String, u64)>,
    /// `(policy, count)` of values refused as non-finite-making, where not 0.
    pub values_rejected: Vec<(String, u64)>,
}

/// Gathers a snapshot from the running daemon.
pub async fn snapshot(ctx: &ControlCtx) -> Snapshot {
    let stats = &ctx.stats;
    let runner = ctx.commander.send(GetStatus).await.unwrap_or_default();
    let models = super::model_views(ctx)
        .await
        .into_iter()
        .map(|v| ModelMetrics {
            paused: runner.paused.contains(&v.model_id),
            events: v.events,
            last_seen: v.last_seen,
            drift_score: v.recent_drift.last().copied().map(decimal),
            accuracy: v.recent_accuracy.last().copied().map(decimal),
            decisions: v
                .decision_counts
                .iter()
                .map(|c| (c.policy.clone(), c.action.to_owned(), c.count))
                .collect(),
            values_rejected: v
                .policies
                .iter()
                .filter(|p| p.values_rejected > 0)
                .map(|p| (p.name.clone(), p.values_rejected))
                .collect(),
            model_id: v.model_id,
        })
        .collect();
    let mut jobs: Vec<(String, u64)> = OUTCOMES
        .iter()
        .map(|o| {
            (
                (*o).to_owned(),
                runner.jobs_by_outcome.get(o).copied().unwrap_or(0),
            )
        })
        .collect();
    for (k, v) in &runner.jobs_by_outcome {
        if !OUTCOMES.contains(k) {
            jobs.push(((*k).to_owned(), *v));
        }
    }
    Snapshot {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: ctx.started.elapsed().as_secs_f64(),
        clock_jumps: ctx.clock.view().jumps,
        events_accepted: stats.accepted.load(Ordering::Relaxed),
        // Refused connections are counted by `connections_refused`, not as lines.
        rejected: ErrorCode::ALL
            .iter()
            .filter(|c| {
                !matches!(
                    c,
                    ErrorCode::TooManyConnections | ErrorCode::PermissionDenied
                )
            })
            .map(|c| {
                (
                    c.as_str(),
                    stats
                        .rejected_by_code
                        .get(*c as usize)
                        .map_or(0, |a| a.load(Ordering::Relaxed)),
                )
            })
            .collect(),
        connections_open: stats.connections.load(Ordering::Relaxed),
        connections_total: stats.connections_total.load(Ordering::Relaxed),
        connections_refused: vec![
            (
                ErrorCode::TooManyConnections.as_str(),
                stats.connections_refused.load(Ordering::Relaxed),
            ),
            (
                "too_many_connections_per_uid",
                stats.connections_refused_uid.load(Ordering::Relaxed),
            ),
            (
                ErrorCode::PermissionDenied.as_str(),
                stats.connections_denied.load(Ordering::Relaxed),
            ),
        ],
        replies_dropped: stats.replies_dropped.load(Ordering::Relaxed),
        control_refused: ctx.refused.load(Ordering::Relaxed),
        store_bytes: ctx.store.size_on_disk(),
        store: ctx.store.stats(),
        store_healthy: ctx.store.health().is_none(),
        models,
        max_model_series: ctx.max_model_series,
        jobs,
        jobs_by_action: runner
            .jobs_by_action
            .iter()
            .map(|((a, o), n)| ((*a).to_owned(), (*o).to_owned(), *n))
            .collect(),
        jobs_running: runner.running as u64,
        jobs_queued: runner.queued as u64,
        hook_durations: runner.hook_durations,
        probations: runner.probations,
        models_on_probation: runner.on_probation as u64,
    }
}

/// A value kept as `f32` as the decimal it was sent as (0.9, not 0.8999999761581421).
fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// The model id the models past `max_model_series` are summed under: `_` is outside the model
/// id alphabet (`[A-Za-z0-9._:/-]`), so no real model can have it.
pub const OTHER: &str = "_other";

/// Splits `models` into those shown one by one (the `max` most recently seen, ties by id, in
/// id order) and the sum of the rest under [`OTHER`] (`None` when there is no rest). The sum
/// carries counters only: a latest value or a pause has no meaning summed over models.
pub fn bound_models(
    models: &[ModelMetrics],
    max: usize,
) -> (Vec<&ModelMetrics>, Option<ModelMetrics>) {
    if models.len() <= max {
        return (models.iter().collect(), None);
    }
    let mut order: Vec<&ModelMetrics> = models.iter().collect();
    order.sort_by(|a, b| {
        b.last_seen
            .total_cmp(&a.last_seen)
            .then_with(|| a.model_id.cmp(&b.model_id))
    });
    let rest = order.split_off(max);
    order.sort_by(|a, b| a.model_id.cmp(&b.model_id));
    let mut other = ModelMetrics {
        model_id: OTHER.into(),
        ..ModelMetrics::default()
    };
    let mut decisions = std::collections::BTreeMap::<(String, String), u64>::new();
    let mut rejected = std::collections::BTreeMap::<String, u64>::new();
    for m in rest {
        other.events += m.events;
        for (policy, action, n) in &m.decisions {
            *decisions
                .entry((policy.clone(), action.clone()))
                .or_default() += n;
        }
        for (policy, n) in &m.values_rejected {
            *rejected.entry(policy.clone()).or_default() += n;
        }
    }
    other.decisions = decisions.into_iter().map(|((p, a), n)| (p, a, n)).collect();
    other.values_rejected = rejected.into_iter().collect();
    (order, Some(other))
}

/// The exposition text of `s`.
pub fn render(s: &Snapshot) -> String {
    let (listed, other) = bound_models(&s.models, s.max_model_series);
    let unlisted = s.models.len() - listed.len();
    // Counters cover every model (the listed ones and `_other`); gauges the listed ones only.
    let counted: Vec<&ModelMetrics> = listed.iter().copied().chain(other.as_ref()).collect();
    let mut out = Exposition::default();
    out.family(
        "visutility_build_info",
        "gauge",
        "Always 1; the version is a label.",
    );
    out.sample("visutility_build_info", &[("version", &s.version)], 1.0);
    out.family(
        "visutility_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
    );
    out.sample("visutility_uptime_seconds", &[], s.uptime_s);
    out.family(
        "visutility_clock_jumps_total",
        "counter",
        "Jumps of the wall clock seen while running (the wall and boot clocks disagreed by more than 3 s between two readings).",
    );
    out.sample("visutility_clock_jumps_total", &[], s.clock_jumps as f64);

    out.family(
        "visutility_events_accepted_total",
        "counter",
        "Events accepted on the ingest socket.",
    );
    out.sample(
        "visutility_events_accepted_total",
        &[],
        s.events_accepted as f64,
    );
    out.family(
        "visutility_lines_rejected_total",
        "counter",
        "Lines rejected on the ingest socket, by reason (the error code of the reply).",
    );
    for (reason, n) in &s.rejected {
        out.sample(
            "visutility_lines_rejected_total",
            &[("reason", reason)],
            *n as f64,
        );
    }
    out.family(
        "visutility_ingest_connections",
        "gauge",
        "Ingest connections open now.",
    );
    out.sample(
        "visutility_ingest_connections",
        &[],
        s.connections_open as f64,
    );
    out.family(
        "visutility_ingest_connections_total",
        "counter",
        "Ingest connections served since start.",
    );
    out.sample(
        "visutility_ingest_connections_total",
        &[],
        s.connections_total as f64,
    );
    out.family(
        "visutility_ingest_connections_refused_total",
        "counter",
        "Ingest connections closed at once, by reason.",
    );
    for (reason, n) in &s.connections_refused {
        out.sample(
            "visutility_ingest_connections_refused_total",
            &[("reason", reason)],
            *n as f64,
        );
    }
    out.family(
        "visutility_ingest_replies_dropped_total",
        "counter",
        "Error replies not delivered because the client did not read them (best effort; flush replies are never dropped).",
    );
    out.sample(
        "visutility_ingest_replies_dropped_total",
        &[],
        s.replies_dropped as f64,
    );
    out.family(
        "visutility_control_refused_total",
        "counter",
        "Control socket connections refused because the peer is not allowed.",
    );
    out.sample(
        "visutility_control_refused_total",
        &[],
        s.control_refused as f64,
    );
    out.family(
        "visutility_store_size_bytes",
        "gauge",
        "Size of the state store on disk.",
    );
    out.sample("visutility_store_size_bytes", &[], s.store_bytes as f64);
    out.family(
        "visutility_store_healthy",
        "gauge",
        "1 while the state store works; 0 once it latched an error (`visutility status` says which).",
    );
    out.sample(
        "visutility_store_healthy",
        &[],
        if s.store_healthy { 1.0 } else { 0.0 },
    );
    let st = &s.store;
    out.family(
        "visutility_store_bytes_written_total",
        "counter",
        "Bytes the state store handed to the file system since start, by what they were (wal: the observation log; checkpoint: model checkpoints; record: jobs and runner records; sled adds its own framing on the last two).",
    );
    for (kind, v) in [
        ("wal", st.wal_bytes_written),
        ("checkpoint", st.checkpoint_bytes_written),
        ("record", st.record_bytes_written),
    ] {
        out.sample(
            "visutility_store_bytes_written_total",
            &[("kind", kind)],
            v as f64,
        );
    }
    for (name, kind, help, v) in [
        (
            "visutility_store_fsyncs_total",
            "counter",
            "fsync and fdatasync calls made by the state store since start.",
            st.fsyncs as f64,
        ),
        (
            "visutility_store_flushes_total",
            "counter",
            "Flush rounds of the state store since start (one fsync round serves every flush waiting).",
            st.flushes as f64,
        ),
        (
            "visutility_store_flush_errors_total",
            "counter",
            "Flush rounds that failed since start.",
            st.flush_errors as f64,
        ),
        (
            "visutility_store_checkpoints_total",
            "counter",
            "Model checkpoints written since start.",
            st.checkpoints as f64,
        ),
        (
            "visutility_store_wal_bytes",
            "gauge",
            "Bytes of the observation log on disk.",
            st.wal_bytes as f64,
        ),
        (
            "visutility_store_wal_segments",
            "gauge",
            "Segment files of the observation log on disk.",
            st.wal_segments as f64,
        ),
        (
            "visutility_store_log_events",
            "gauge",
            "Events logged since their model's checkpoint (replayed at the next load).",
            st.tail_events as f64,
        ),
        (
            "visutility_store_log_bytes",
            "gauge",
            "Encoded bytes of those events, held in memory and in the log.",
            st.tail_bytes as f64,
        ),
        (
            "visutility_store_recovered_torn_bytes",
            "gauge",
            "Bytes after the last whole frame of the observation log at the last start (a write torn by a power cut; never acknowledged).",
            st.recovery.torn_bytes as f64,
        ),
        (
            "visutility_store_undecodable_models",
            "gauge",
            "Models whose stored state does not decode: they cannot load until `visutility reset` or `visutility forget` replaces it (`visutility status` names them).",
            st.undecodable_models.len() as f64,
        ),
    ] {
        out.family(name, kind, help);
        out.sample(name, &[], v);
    }

    out.family("visutility_models", "gauge", "Models known to the daemon.");
    out.sample("visutility_models", &[], s.models.len() as f64);
    out.family(
        "visutility_models_unlisted",
        "gauge",
        "Models without series of their own (past [metrics] max_model_series, the least recently seen); their counters are summed in the series labelled _other.",
    );
    out.sample("visutility_models_unlisted", &[], unlisted as f64);
    out.family(
        "visutility_model_events_total",
        "counter",
        "Events applied and persisted per model since it was first seen.",
    );
    for m in &counted {
        out.sample(
            "visutility_model_events_total",
            &[("model_id", &m.model_id)],
            m.events as f64,
        );
    }
    out.family(
        "visutility_model_last_seen_timestamp_seconds",
        "gauge",
        "Timestamp of each model's latest event (Unix seconds).",
    );
    for m in &listed {
        out.sample(
            "visutility_model_last_seen_timestamp_seconds",
            &[("model_id", &m.model_id)],
            m.last_seen,
        );
    }
    out.family(
        "visutility_model_drift_score",
        "gauge",
        "Latest drift_score reported per model.",
    );
    for m in &listed {
        if let Some(d) = m.drift_score {
            out.sample(
                "visutility_model_drift_score",
                &[("model_id", &m.model_id)],
                d,
            );
        }
    }
    out.family(
        "visutility_model_accuracy",
        "gauge",
        "Latest accuracy reported per model.",
    );
    for m in &listed {
        if let Some(a) = m.accuracy {
            out.sample("visutility_model_accuracy", &[("model_id", &m.model_id)], a);
        }
    }
    out.family(
        "visutility_model_paused",
        "gauge",
        "1 while a model is paused (decisions recorded, no hooks run).",
    );
    for m in &listed {
        out.sample(
            "visutility_model_paused",
            &[("model_id", &m.model_id)],
            if m.paused { 1.0 } else { 0.0 },
        );
    }
    out.family(
        "visutility_policy_values_rejected_total",
        "counter",
        "Values a policy refused since the model was loaded, because they would have made its detector's state non-finite.",
    );
    for m in &counted {
        for (policy, n) in &m.values_rejected {
            out.sample(
                "visutility_policy_values_rejected_total",
                &[("model_id", &m.model_id), ("policy", policy)],
                *n as f64,
            );
        }
    }
    out.family(
        "visutility_decisions_total",
        "counter",
        "Policy decisions since start, by model, policy and action.",
    );
    for m in &counted {
        for (policy, action, n) in &m.decisions {
            out.sample(
                "visutility_decisions_total",
                &[
                    ("model_id", &m.model_id),
                    ("policy", policy),
                    ("action", action),
                ],
                *n as f64,
            );
        }
    }

    out.family(
        "visutility_jobs_total",
        "counter",
        "Jobs that reached an end state since start, by outcome.",
    );
    for (outcome, n) in &s.jobs {
        out.sample("visutility_jobs_total", &[("outcome", outcome)], *n as f64);
    }
    out.family(
        "visutility_jobs_by_action_total",
        "counter",
        "Jobs that reached an end state since start, by action (full, fine_tune, escalate) and outcome.",
    );
    for (action, outcome, n) in &s.jobs_by_action {
        out.sample(
            "visutility_jobs_by_action_total",
            &[("action", action), ("outcome", outcome)],
            *n as f64,
        );
    }
    out.family("visutility_jobs_running", "gauge", "Hooks running now.");
    out.sample("visutility_jobs_running", &[], s.jobs_running as f64);
    out.family(
        "visutility_jobs_queued",
        "gauge",
        "Jobs waiting for a slot or for their retry backoff.",
    );
    out.sample("visutility_jobs_queued", &[], s.jobs_queued as f64);
    out.family(
        "visutility_probation_total",
        "counter",
        "Probations of retrains that ended since start, by outcome (promoted, rolled_back, inconclusive, superseded).",
    );
    for (outcome, n) in &s.probations {
        out.sample(
            "visutility_probation_total",
            &[("outcome", outcome)],
            *n as f64,
        );
    }
    out.family(
        "visutility_models_on_probation",
        "gauge",
        "Models whose latest retrain is on probation now.",
    );
    out.sample(
        "visutility_models_on_probation",
        &[],
        s.models_on_probation as f64,
    );

    let h = &s.hook_durations;
    out.family(
        "visutility_hook_duration_seconds",
        "histogram",
        "How long hook runs took, from start to exit, timeout or kill.",
    );
    for (le, n) in h.cumulative() {
        let le = if le.is_infinite() {
            "+Inf".to_owned()
        } else {
            number(le)
        };
        out.sample(
            "visutility_hook_duration_seconds_bucket",
            &[("le", &le)],
            n as f64,
        );
    }
    out.sample("visutility_hook_duration_seconds_sum", &[], h.sum_s);
    out.sample(
        "visutility_hook_duration_seconds_count",
        &[],
        h.count() as f64,
    );
    out.text
}

/// Writes `text` to `path` so that a reader sees the old file or the new one, never a mix:
/// a temporary file in the same directory (so the rename stays on one filesystem), fsync,
/// rename over the target, fsync the directory. The temporary name does not end in `.prom`,
/// so node_exporter never reads it.
///
/// The textfile directory is often shared with other collectors and writable by other users,
/// so the temporary file has a random name and is created exclusively (`O_CREAT|O_EXCL`, which
/// also refuses a symlink planted at that name): a predictable name opened without it let
/// anyone who could write the directory point it at a root-only file, which the daemon then
/// overwrote and made world-readable. The mode is changed on our own descriptor only.
pub fn write_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the textfile path names no file"))?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".tmp.");
    // Removed on drop when anything below fails.
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix("")
        .tempfile_in(dir)?;
    // Whatever the umask (systemd units often set 0077), node_exporter must read it.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The exposition being written.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
    }
}

/// A sample value as the format spells it (`NaN`, `+Inf`, `-Inf`, or a Go-style float).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// Help text escapes backslash and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', r"\\").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_snapshot() -> Snapshot {
        let mut hook_durations = DurationHistogram::default();
        for s in [0.5, 2.0, 45.0, 10_000.0] {
            hook_durations.observe(s);
        }
        Snapshot {
            version: "9.9.9".into(),
            uptime_s: 12.5,
            clock_jumps: 2,
            events_accepted: 42,
            rejected: vec![("bad_json", 3), ("bad_field", 0)],
            connections_open: 1,
            connections_total: 7,
            connections_refused: vec![("too_many_connections", 0), ("permission_denied", 2)],
            replies_dropped: 5,
            control_refused: 1,
            store_bytes: 4096,
            store: Default::default(),
            store_healthy: true,
            max_model_series: 1000,
            models: vec![ModelMetrics {
                model_id: "fraud-v3".into(),
                events: 40,
                last_seen: 1_764_172_800.25,
                drift_score: Some(0.125),
                accuracy: None,
                paused: true,
                decisions: vec![("odd \"name\"\\".into(), "full".into(), 2)],
                values_rejected: vec![("errors".into(), 3)],
            }],
            jobs: vec![("succeeded".into(), 1), ("failed".into(), 0)],
            jobs_by_action: vec![("full".into(), "succeeded".into(), 1)],
            jobs_running: 0,
            jobs_queued: 1,
            hook_durations,
            probations: vec![("promoted", 2), ("rolled_back", 1)],
            models_on_probation: 1,
        }
    }

    #[test]
    fn every_family_has_help_and_type_and_counters_end_in_total() {
        let text = render(&sample_snapshot());
        let mut families = Vec::new();
        for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = l.split(' ').skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name}");
            }
            families.push(name.to_owned());
        }
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(
                families.iter().any(|f| name == f
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(f))),
                "sample {l:?} outside a declared family"
            );
        }
    }

    #[test]
    fn renders_labels_escaped_and_histogram_cumulative() {
        let text = render(&sample_snapshot());
        assert!(
            text.contains("visutility_build_info{version=\"9.9.9\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("visutility_lines_rejected_total{reason=\"bad_json\"} 3\n"));
        assert!(text.contains("visutility_model_drift_score{model_id=\"fraud-v3\"} 0.125\n"));
        assert!(
            !text.contains("visutility_model_accuracy{"),
            "no accuracy sample without a reported accuracy"
        );
        assert!(text.contains(
            r#"visutility_decisions_total{model_id="fraud-v3",policy="odd \"name\"\\",action="full"} 2"#
        ));
        assert!(text.contains("visutility_model_paused{model_id=\"fraud-v3\"} 1\n"));
        assert!(text.contains(
            "visutility_policy_values_rejected_total{model_id=\"fraud-v3\",policy=\"errors\"} 3\n"
        ));
        assert!(text.contains("visutility_hook_duration_seconds_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("visutility_hook_duration_seconds_bucket{le=\"60\"} 3\n"));
        assert!(text.contains("visutility_hook_duration_seconds_bucket{le=\"7200\"} 3\n"));
        assert!(text.contains("visutility_hook_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("visutility_hook_duration_seconds_count 4\n"));
        assert!(text.contains("visutility_hook_duration_seconds_sum 10047.5\n"));
    }

    fn model(id: &str, last_seen: f64, events: u64) -> ModelMetrics {
        ModelMetrics {
            model_id: id.into(),
            events,
            last_seen,
            drift_score: Some(0.5),
            decisions: vec![("p".into(), "full".into(), 1)],
            ..ModelMetrics::default()
        }
    }

    #[test]
    fn models_past_max_model_series_are_summed_under_other() {
        let mut s = sample_snapshot();
        s.models = vec![
            model("a", 10.0, 1),
            model("b", 30.0, 2),
            model("c", 20.0, 4),
            model("d", 30.0, 8),
        ];
        s.max_model_series = 2;
        // The two most recently seen (b and d at 30, ties by id), listed in id order.
        let (listed, other) = bound_models(&s.models, 2);
        let ids: Vec<_> = listed.iter().map(|m| m.model_id.as_str()).collect();
        assert_eq!(ids, ["b", "d"]);
        let other = other.unwrap();
        assert_eq!(
            (other.events, other.decisions.clone()),
            (5, vec![("p".into(), "full".into(), 2)])
        );

        let text = render(&s);
        assert!(text.contains("visutility_models 4\n"), "{text}");
        assert!(text.contains("visutility_models_unlisted 2\n"), "{text}");
        assert!(text.contains("visutility_model_events_total{model_id=\"b\"} 2\n"));
        assert!(text.contains("visutility_model_events_total{model_id=\"_other\"} 5\n"));
        assert!(text.contains(
            "visutility_decisions_total{model_id=\"_other\",policy=\"p\",action=\"full\"} 2\n"
        ));
        assert!(!text.contains("model_id=\"a\""), "{text}");
        assert!(!text.contains("model_id=\"c\""), "{text}");
        // Gauges have no meaning summed: `_other` has none.
        assert!(!text.contains("visutility_model_drift_score{model_id=\"_other\"}"));
        assert!(
            !text.contains("visutility_model_last_seen_timestamp_seconds{model_id=\"_other\"}")
        );

        // Under the bound nothing is summed; 0 lists no model at all.
        s.max_model_series = 4;
        let text = render(&s);
        assert!(text.contains("visutility_models_unlisted 0\n"));
        assert!(!text.contains("model_id=\"_other\""), "{text}");
        s.max_model_series = 0;
        let text = render(&s);
        assert!(text.contains("visutility_models_unlisted 4\n"));
        assert!(text.contains("visutility_model_events_total{model_id=\"_other\"} 15\n"));
    }

    #[test]
    fn store_health_and_jobs_by_action() {
        let mut s = sample_snapshot();
        let text = render(&s);
        assert!(text.contains("visutility_store_healthy 1\n"));
        assert!(text.contains(
            "visutility_jobs_by_action_total{action=\"full\",outcome=\"succeeded\"} 1\n"
        ));
        s.store_healthy = false;
        assert!(render(&s).contains("visutility_store_healthy 0\n"));
    }

    #[test]
    fn textfile_is_replaced_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("visutility.prom");
        write_textfile(&path, "a 1\n").unwrap();
        write_textfile(&path, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["visutility.prom"]);
    }
}
