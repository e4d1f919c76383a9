//! The daemon's own metrics in the Prometheus text exposition format.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::ControlCtx;
use crate::command::GetStatus;
use crate::protocol::ErrorCode;

pub async fn render(ctx: &ControlCtx) -> String {
    let mut s = String::new();
    let stats = &ctx.stats;
    let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, f64)>| {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} {kind}");
        for (labels, v) in lines {
            let _ = writeln!(s, "{name}{labels} {v}");
        }
    };
    metric(
        "visutility_events_accepted_total",
        "counter",
        "Events accepted on the ingest socket.",
        vec![(String::new(), stats.accepted.load(Ordering::Relaxed) as f64)],
    );
    metric(
        "visutility_lines_rejected_total",
        "counter",
        "Lines rejected on the ingest socket, by reason.",
        ErrorCode::ALL
            .iter()
            .map(|c| {
                (
                    format!("{{reason=\"{}\"}}", c.as_str()),
                    stats
                        .rejected_by_code
                        .get(*c as usize)
                        .map(|a| a.load(Ordering::Relaxed))
                        .unwrap_or(0) as f64,
                )
            })
            .collect(),
    );
    metric(
        "visutility_connections",
        "gauge",
        "Open ingest connections.",
        vec![(
            String::new(),
            stats.connections.load(Ordering::Relaxed) as f64,
        )],
    );
    metric(
        "visutility_store_size_bytes",
        "gauge",
        "Size of the state store on disk.",
        vec![(String::new(), ctx.store.size_on_disk() as f64)],
    );
    let views = super::model_views(ctx).await;
    metric(
        "visutility_model_events_total",
        "counter",
        "Events applied per model.",
        views
            .iter()
            .map(|v| (format!("{{model_id=\"{}\"}}", v.model_id), v.events as f64))
            .collect(),
    );
    metric(
        "visutility_model_drift_score",
        "gauge",
        "Last drift score per model.",
        views
            .iter()
            .filter_map(|v| {
                v.recent_drift
                    .last()
                    .map(|d| (format!("{{model_id=\"{}\"}}", v.model_id), *d as f64))
            })
            .collect(),
    );
    metric(
        "visutility_model_accuracy",
        "gauge",
        "Last accuracy per model.",
        views
            .iter()
            .filter_map(|v| {
                v.recent_accuracy
                    .last()
                    .map(|d| (format!("{{model_id=\"{}\"}}", v.model_id), *d as f64))
            })
            .collect(),
    );
    metric(
        "visutility_decisions_total",
        "counter",
        "Decisions per model.",
        views
            .iter()
            .map(|v| {
                (
                    format!("{{model_id=\"{}\"}}", v.model_id),
                    v.decisions as f64,
                )
            })
            .collect(),
    );
    if let Ok(runner) = ctx.commander.send(GetStatus).await {
        let mut outcomes: Vec<_> = runner.jobs_by_outcome.iter().collect();
        outcomes.sort();
        metric(
            "visutility_jobs_total",
            "counter",
            "Jobs ended since start, by outcome.",
            outcomes
                .into_iter()
                .map(|(k, v)| (format!("{{outcome=\"{k}\"}}"), *v as f64))
                .collect(),
        );
        metric(
            "visutility_jobs_running",
            "gauge",
            "Hooks running now.",
            vec![(String::new(), runner.running as f64)],
        );
    }
    s
}
