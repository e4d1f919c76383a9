//! The fleet path (issue 14.2): a real Prometheus scrapes the daemon's metrics through
//! node_exporter's textfile collector and through `[metrics] listen`, the shipped alert rules
//! pass `promtool test rules`, every expression of the shipped Grafana dashboard passes
//! promtool, and `[metrics] max_model_series` bounds the per-model series.
//!
//! Prometheus, node_exporter and promtool come from Debian's `prometheus` and
//! `prometheus-node-exporter`; `.ci/run` installs them before `cargo test`. The tests do not
//! install anything themselves (they run in parallel): without the programs they say so on
//! stderr and pass.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

const RULES: &str = "systemd/prometheus/visutility.rules.yml";
const RULES_TEST: &str = "systemd/prometheus/visutility.rules.test.yml";
const DASHBOARD: &str = "systemd/grafana/visutility.json";

/// The first of `names` found on `PATH`, or `None` after printing why the test is skipped.
fn program(names: &[&str], package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!(
            "SKIPPED: none of {names:?} is installed (apt-get install {package}; .ci/run does)"
        );
    }
    found
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs promtool with `args`; panics with its output unless it succeeds.
fn promtool(promtool: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(repo("."))
        .output()
        .expect("run promtool");
    let text = out_text(&out);
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn shipped_alert_rules_pass_promtool_check_and_unit_tests() {
    let Some(p) = program(&["promtool"], "prometheus") else {
        return;
    };
    let text = promtool(&p, &["check", "rules", RULES]);
    assert!(text.contains("SUCCESS"), "{text}");
    let text = promtool(&p, &["test", "rules", RULES_TEST]);
    assert!(text.contains("SUCCESS"), "{text}");
}

/// Every `expr` of the dashboard, with Grafana's variables replaced by what they expand to.
fn dashboard_exprs() -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(&fs::read_to_string(repo(DASHBOARD)).unwrap())
        .expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr").to_owned();
            let title = format!("{} / {}", panel["title"], target["refId"]);
            out.push((title, expr));
        }
    }
    assert!(out.len() >= 10, "too few expressions: {out:?}");
    out
}

#[test]
fn dashboard_expressions_pass_promtool_and_name_metrics_that_exist() {
    // Every name the dashboard and the rules use is one the daemon exports (or comes from
    // node_exporter or Prometheus itself).
    let d = Daemon::start_default();
    let exposition = d.cli_ok(&["metrics"]);
    let rules = fs::read_to_string(repo(RULES)).unwrap();
    let exprs = dashboard_exprs();
    let all = exprs
        .iter()
        .map(|(_, e)| e.as_str())
        .chain([rules.as_str()]);
    for text in all {
        for (i, _) in text.match_indices("visutility_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name == "visutility_" {
                continue;
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| exposition.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(&name);
            assert!(
                exposition.contains(&format!("# TYPE {family} ")),
                "{name} is used in {text:?} but not exported:\n{exposition}"
            );
        }
    }

    let Some(p) = program(&["promtool"], "prometheus") else {
        return;
    };
    // promtool has no "check this expression" command: each becomes a recording rule.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h")
            .replace("$instance", ".*");
        assert!(
            !expr.contains('$'),
            "an unknown variable in {title}: {expr}"
        );
        rules.push_str(&format!(
            "      - record: dashboard_expr_{i}\n        expr: {}\n",
            json!(expr)
        ));
    }
    let file = d.path("dashboard.rules.yml");
    fs::write(&file, rules).unwrap();
    let text = promtool(&p, &["check", "rules", file.to_str().unwrap()]);
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{text}"
    );
}

/// A port free now on loopback.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET (no chunked encoding to undo): the status line and the body.
fn http_get(port: u16, target: &str) -> Option<(String, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.to_owned();
    Some((status, head.to_owned(), body.to_owned()))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The instant vector `query` evaluates to in the Prometheus at `port`.
fn query(port: u16, q: &str) -> Option<Vec<Value>> {
    let (status, _, body) = http_get(port, &format!("/api/v1/query?query={}", percent_encode(q)))?;
    if !status.contains(" 200 ") {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"].as_array().cloned()
}

/// The single sample's value of `q`, once there is exactly one.
fn value(port: u16, q: &str) -> Option<(Value, f64)> {
    let r = query(port, q)?;
    let [one] = r.as_slice() else { return None };
    let v = one["value"][1].as_str()?.parse().ok()?;
    Some((one["metric"].clone(), v))
}

#[test]
fn real_prometheus_collects_the_textfile_and_the_listener() {
    let (Some(prometheus), Some(node_exporter)) = (
        program(&["prometheus"], "prometheus"),
        program(
            &["prometheus-node-exporter", "node_exporter"],
            "prometheus-node-exporter",
        ),
    ) else {
        return;
    };
    let b = Daemon::builder();
    let hook = b.recording_hook("hook", 0);
    let textfiles = b.path("textfile");
    fs::create_dir_all(&textfiles).unwrap();
    let listen = free_port();
    let d = b
        .body(format!(
            r#"
[hooks]
retries = 0
full = {{ command = {}, timeout_s = 60 }}

[metrics]
textfile = {}
interval_s = 1
listen = "127.0.0.1:{listen}"

[[models]]
match = "*"

[[models.policies]]
name = "drifted"
kind = "static_threshold"
max_drift = 0.5
"#,
            hook.command_toml(&[]),
            toml_path(&textfiles.join("visutility.prom")),
        ))
        .start();

    // The listener answers at once, /metrics only.
    let (status, head, body) = http_get(listen, "/metrics").expect("GET /metrics");
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        body.contains("# TYPE visutility_build_info gauge"),
        "{body}"
    );
    let (status, _, _) = http_get(listen, "/").expect("GET /");
    assert!(status.contains(" 404 "), "{status}");

    d.push_events(&[
        json!({"model_id": "m1", "drift_score": 0.1}).to_string(),
        json!({"model_id": "m1", "drift_score": 0.2}).to_string(),
        json!({"model_id": "m1", "drift_score": 0.9}).to_string(),
    ]);
    d.wait_job(Some("m1"), "m1's retrain succeeded", |j| {
        j["state"] == "succeeded"
    });

    let node_port = free_port();
    let _node = ChildGuard(
        Command::new(&node_exporter)
            .args([
                "--collector.disable-defaults".to_owned(),
                "--collector.textfile".to_owned(),
                format!("--collector.textfile.directory={}", textfiles.display()),
                format!("--web.listen-address=127.0.0.1:{node_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(fs::File::create(d.path("node_exporter.log")).unwrap())
            .spawn()
            .expect("start node_exporter"),
    );
    let prom_port = free_port();
    let config = d.path("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{node_port}']\n  - job_name: visutility\n    static_configs:\n      - targets: ['127.0.0.1:{listen}']\n"
        ),
    )
    .unwrap();
    let tsdb = d.path("tsdb");
    let _prom = ChildGuard(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(d.path("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus"),
    );
    let logs = || {
        format!(
            "--- prometheus ---\n{}\n--- node_exporter ---\n{}",
            fs::read_to_string(d.path("prometheus.log")).unwrap_or_default(),
            fs::read_to_string(d.path("node_exporter.log")).unwrap_or_default()
        )
    };
    let wait = |q: &str, want: f64| -> Value {
        let mut last = None;
        poll_until(Duration::from_secs(60), || {
            last = query(prom_port, q);
            value(prom_port, q).filter(|(_, v)| *v == want)
        })
        .unwrap_or_else(|| {
            d.fail(format!(
                "Prometheus never answered {q} with {want}; last: {last:?}\n{}",
                logs()
            ))
        })
        .0
    };

    for job in ["node", "visutility"] {
        let labels = wait(
            &format!(r#"visutility_model_events_total{{job="{job}",model_id="m1"}}"#),
            3.0,
        );
        assert_eq!(labels["model_id"], "m1");
        let labels = wait(
            &format!(r#"visutility_decisions_total{{job="{job}",model_id="m1"}}"#),
            1.0,
        );
        assert_eq!(
            (&labels["policy"], &labels["action"]),
            (&json!("drifted"), &json!("full")),
            "{labels}"
        );
        wait(
            &format!(
                r#"visutility_jobs_by_action_total{{job="{job}",action="full",outcome="succeeded"}}"#
            ),
            1.0,
        );
        wait(
            &format!(r#"visutility_model_drift_score{{job="{job}"}}"#),
            0.9,
        );
        wait(&format!(r#"visutility_store_healthy{{job="{job}"}}"#), 1.0);
        wait(
            &format!(r#"visutility_models_unlisted{{job="{job}"}}"#),
            0.0,
        );
    }
    wait(r#"up{job="visutility"}"#, 1.0);
    // The textfile is being rewritten: node_exporter sees a fresh mtime and no error.
    wait("node_textfile_scrape_error", 0.0);
    wait(
        r#"count(time() - node_textfile_mtime_seconds{file=~".*visutility.prom"} < 30)"#,
        1.0,
    );
}

#[test]
fn metrics_listen_bind_error_refuses_to_start() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut d = Daemon::builder()
        .body(format!("{QUIET_BODY}\n[metrics]\nlisten = \"{addr}\"\n"))
        .spawn_only();
    let status = d.wait_exit();
    assert!(!status.success(), "started on a taken port");
    let logs = d.logs();
    assert!(
        logs.contains(&format!("cannot listen for metrics on {addr}")),
        "the error names no address:\n{logs}"
    );
    assert!(!d.socket.exists(), "the ingest socket was created");
}

#[test]
fn max_model_series_sums_the_least_recently_seen_under_other() {
    let d = Daemon::builder()
        .body(format!("{QUIET_BODY}\n[metrics]\nmax_model_series = 2\n"))
        .start();
    d.push_events(&[plain_event("a"), plain_event("a")]);
    std::thread::sleep(Duration::from_millis(20));
    d.push_events(&[plain_event("b"), plain_event("c"), plain_event("c")]);
    let text = d.cli_ok(&["metrics"]);
    for want in [
        "visutility_models 3\n",
        "visutility_models_unlisted 1\n",
        "visutility_model_events_total{model_id=\"b\"} 1\n",
        "visutility_model_events_total{model_id=\"c\"} 2\n",
        "visutility_model_events_total{model_id=\"_other\"} 2\n",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    assert!(!text.contains("model_id=\"a\""), "{text}");
}
