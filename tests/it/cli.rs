//! Contract section 1: `push`, the control commands with `--json`, `metrics`,
//! `backtest`.

use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};

use crate::support::*;

fn events_file(d: &Daemon, name: &str, lines: &[&str]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    d.sb.write(name, &text).to_str().unwrap().to_string()
}

/// The flush reply among the JSON values printed by `push`.
fn flush_reply(vals: &[Value]) -> Option<Value> {
    vals.iter()
        .find(|v| v["ok"] == json!(true) && v.get("accepted").is_some())
        .cloned()
}

#[test]
fn push_all_valid_exits_0_and_prints_the_flush_reply() {
    let d = Daemon::start_default();
    let f = events_file(
        &d,
        "ev.jsonl",
        &[
            r#"{"model_id":"p1","drift_score":0.1}"#,
            r#"{"model_id":"p1","accuracy":0.99,"error":false}"#,
            r#"{"model_id":"p2","metrics":{"latency_ms":3}}"#,
        ],
    );
    let o = d.cli(&["push", &f]);
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o));
    let vals = json_values(&combined(&o));
    let reply = flush_reply(&vals)
        .unwrap_or_else(|| d.fail(format!("no flush reply printed:\n{}", out_text(&o))));
    assert_flush(&reply, 3, 0);
    assert!(
        vals.iter().all(|v| v.get("error").is_none()),
        "{}",
        out_text(&o)
    );
    assert_eq!(d.events_of("p1"), 2);
    assert_eq!(d.events_of("p2"), 1);
}

#[test]
fn push_with_a_rejected_line_exits_1_and_prints_the_error() {
    let d = Daemon::start_default();
    let f = events_file(
        &d,
        "ev.jsonl",
        &[
            r#"{"model_id":"p1"}"#,
            r#"{"model_id":"p1","bogus":1}"#,
            r#"{"model_id":"p1"}"#,
            r#"{"model_id":"../etc"}"#,
        ],
    );
    let o = d.cli(&["push", &f]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    let vals = json_values(&combined(&o));
    let reply = flush_reply(&vals)
        .unwrap_or_else(|| d.fail(format!("no flush reply printed:\n{}", out_text(&o))));
    assert_flush(&reply, 2, 2);
    assert!(
        vals.iter()
            .any(|v| is_error(v, &["bad_field", "bad_json"], 2)),
        "error reply for line 2 not printed:\n{}",
        out_text(&o)
    );
    assert!(
        vals.iter().any(|v| is_error(v, &["bad_model_id"], 4)),
        "error reply for line 4 not printed:\n{}",
        out_text(&o)
    );
    assert_eq!(d.events_of("p1"), 2);
}

#[test]
fn push_reads_stdin() {
    let d = Daemon::start_default();
    let data = b"{\"model_id\":\"s1\"}\n{\"model_id\":\"s1\",\"value\":2}\n";
    let o = d.cli_stdin(&["push", "-"], data);
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o));
    let reply = flush_reply(&json_values(&combined(&o)));
    assert_eq!(
        reply.as_ref().and_then(|r| r["accepted"].as_u64()),
        Some(2),
        "{}",
        out_text(&o)
    );
    // no FILE argument means stdin as well
    let o = d.cli_stdin(&["push"], b"{\"model_id\":\"s1\"}\n");
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o));
    assert_eq!(d.events_of("s1"), 3);
    // a rejected line from stdin gives exit 1
    let o = d.cli_stdin(&["push", "-"], b"nope\n");
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
}

#[test]
fn push_socket_flag_overrides_the_config() {
    let d = Daemon::start_default();
    // a config whose socket points nowhere
    let other = d.sb.write(
        "other.toml",
        &format!(
            "[daemon]\nsocket = {}\ncontrol_socket = {}\nstate_dir = {}\n{QUIET_BODY}",
            toml_path(&d.path("nowhere.sock")),
            toml_path(&d.path("nowhere-control.sock")),
            toml_path(&d.path("other-state")),
        ),
    );
    let f = events_file(&d, "ev.jsonl", &[r#"{"model_id":"o1"}"#]);
    let mut cmd = d.sb.command(&[
        "push",
        "--config",
        other.to_str().unwrap(),
        "--socket",
        d.socket.to_str().unwrap(),
        &f,
    ]);
    cmd.current_dir(d.dir());
    let o = run_with_timeout(cmd, None, CLI_DEADLINE).unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o));
    assert_eq!(d.events_of("o1"), 1);
    // without --socket the same config fails (nothing listens there)
    let o = d.sb.run(&["push", "--config", other.to_str().unwrap(), &f]);
    assert!(
        !o.status.success(),
        "push to a dead socket succeeded: {}",
        out_text(&o)
    );
}

#[test]
fn models_json_shape() {
    let d = Daemon::start_default();
    d.push_events(&[plain_event("m-a"), plain_event("m-a"), plain_event("m-b")]);
    let v = d.models_json();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2, "{v}");
    for m in arr {
        assert!(m["model_id"].is_string(), "{m}");
        assert!(m["events"].is_u64(), "{m}");
        assert!(
            m["last_seen"].as_f64().is_some_and(|t| t > 1.0e9),
            "last_seen (Unix seconds): {m}"
        );
        assert!(m["paused"].is_boolean(), "{m}");
    }
    assert_eq!(d.events_of("m-a"), 2);
    assert_eq!(d.events_of("m-b"), 1);
    // `--config` before the subcommand works too
    let mut cmd = d.sb.command(&[
        "--config",
        d.config_path.to_str().unwrap(),
        "models",
        "--json",
    ]);
    cmd.current_dir(d.dir());
    let o = run_with_timeout(cmd, None, CLI_DEADLINE).unwrap();
    assert!(o.status.success(), "{}", out_text(&o));
    let v2: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| d.fail(format!("{e}: {}", out_text(&o))));
    assert_eq!(v2.as_array().map(|a| a.len()), Some(2), "{v2}");
    // human output exists and mentions the models
    let text = d.cli_ok(&["models"]);
    assert!(text.contains("m-a") && text.contains("m-b"), "{text}");
}

#[test]
fn status_json_shape() {
    let d = Daemon::start_default();
    d.push_events(&[plain_event("s-a"), plain_event("s-b")]);
    let s = d.status_json();
    assert!(s.is_object(), "{s}");
    let version = s["version"]
        .as_str()
        .unwrap_or_else(|| d.fail(format!("no version: {s}")));
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "version {version:?}"
    );
    assert!(
        s["uptime_s"].as_f64().is_some_and(|u| u >= 0.0),
        "uptime_s: {s}"
    );
    let models_ok = match &s["models"] {
        Value::Number(n) => n.as_u64() == Some(2),
        Value::Array(a) => a.len() == 2,
        _ => false,
    };
    assert!(models_ok, "status models should count 2: {s}");
}

#[test]
fn history_json_shape_and_model_filter() {
    let b = Daemon::builder();
    let hook = b.recording_hook("hook", 0);
    let cmd = hook.command_toml(&[]);
    let d = b.body(QUIET_BODY.replace(r#"["/bin/true"]"#, &cmd)).start();
    d.push_events(&[plain_event("h1"), plain_event("h2")]);
    assert_eq!(d.history(None), Vec::<Value>::new(), "no jobs yet");
    d.cli_ok(&["trigger", "h1", "full"]);
    let job = d.wait_job(Some("h1"), "h1 job succeeded", |j| {
        j["state"] == "succeeded"
    });
    assert_contract_fields(&job);
    assert_eq!(job["model_id"], "h1");
    assert_eq!(job["action"], "full");
    assert_eq!(job["attempts"].as_u64(), Some(1), "{job}");
    assert_eq!(job["exit_code"].as_i64(), Some(0), "{job}");
    if let (Some(s), Some(e)) = (job["started"].as_f64(), job["ended"].as_f64()) {
        assert!(e >= s, "ended before started: {job}");
    }
    assert_eq!(hook.runs().len(), 1);
    assert_eq!(d.history(Some("h2")), Vec::<Value>::new(), "h2 has no jobs");
    let all = d.history(None);
    assert_eq!(all.len(), 1, "{all:?}");

    // an invalid action is refused
    let o = d.cli(&["trigger", "h1", "reboot"]);
    assert!(
        !o.status.success(),
        "trigger with action 'reboot' succeeded: {}",
        out_text(&o)
    );
}

#[test]
fn pause_and_resume_show_in_models() {
    let d = Daemon::start_default();
    d.push_events(&[plain_event("pz")]);
    let paused = |d: &Daemon| d.model("pz").map(|m| m["paused"].clone());
    assert_eq!(paused(&d), Some(json!(false)));
    d.cli_ok(&["pause", "pz"]);
    assert_eq!(paused(&d), Some(json!(true)));
    // a paused model still takes events
    d.push_events(&[plain_event("pz")]);
    assert_eq!(d.events_of("pz"), 2);
    d.cli_ok(&["resume", "pz"]);
    assert_eq!(paused(&d), Some(json!(false)));
}

#[test]
fn reset_clears_the_detector_window() {
    let b = Daemon::builder();
    let hook = b.recording_hook("hook", 0);
    let d = b.body(drift_window_body(&hook)).start();
    d.push_events(
        &(1..=9)
            .map(|s| drift_event("rz", 1.0, s))
            .collect::<Vec<_>>(),
    );
    d.cli_ok(&["reset", "rz"]);
    d.push_events(
        &(10..=18)
            .map(|s| drift_event("rz", 1.0, s))
            .collect::<Vec<_>>(),
    );
    assert_eq!(hook.started(), 0, "fired although reset emptied the window");
    d.push_events(&[drift_event("rz", 1.0, 19)]);
    let runs = d.wait_runs(&hook, 1);
    assert_eq!(runs[0].seq(), Some(19), "stdin: {}", runs[0].stdin);
}

#[test]
fn control_commands_fail_cleanly_without_a_daemon() {
    let sb = Sandbox::new();
    let cfg = sb.write(
        "config.toml",
        &format!(
            "[daemon]\nsocket = {}\ncontrol_socket = {}\nstate_dir = {}\n",
            toml_path(&sb.path("ingest.sock")),
            toml_path(&sb.path("control.sock")),
            toml_path(&sb.path("state")),
        ),
    );
    let cfg = cfg.to_str().unwrap();
    for args in [
        vec!["models", "--json"],
        vec!["status", "--json"],
        vec!["history", "--json"],
        vec!["pause", "m1"],
    ] {
        let mut a = args.clone();
        a.extend(["--config", cfg]);
        let o = sb.run(&a);
        assert!(
            !o.status.success(),
            "`{}` succeeded without a daemon: {}",
            args.join(" "),
            out_text(&o)
        );
        assert!(!o.stderr.is_empty(), "`{}` failed silently", args.join(" "));
    }
}

#[test]
fn metrics_prints_prometheus_text() {
    let d = Daemon::start_default();
    d.push_events(&[plain_event("mx")]);
    let text = d.cli_ok(&["metrics"]);
    assert!(
        text.lines().any(|l| l.starts_with("# TYPE ")),
        "no # TYPE line:\n{text}"
    );
    let samples: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert!(!samples.is_empty(), "no samples:\n{text}");
    for l in samples {
        let value = l.rsplit(' ').next().unwrap_or("");
        let name_ok = l
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
        let value_ok = value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value);
        // a trailing timestamp is allowed: then the value is the second-to-last field
        let ts_ok = {
            let parts: Vec<&str> = l.split(' ').collect();
            parts.len() >= 3
                && parts[parts.len() - 2].parse::<f64>().is_ok()
                && value.parse::<i64>().is_ok()
        };
        assert!(
            name_ok && (value_ok || ts_ok),
            "not a Prometheus sample line: {l:?}"
        );
    }
}

#[test]
fn backtest_prints_signals_in_input_order_and_writes_nothing() {
    let sb = Sandbox::new();
    let cfg = sb.write(
        "config.toml",
        &format!(
            r#"[daemon]
socket = {}
control_socket = {}
state_dir = {}

[hooks]
full = {{ command = ["/bin/false"], timeout_s = 60 }}
fine_tune = {{ command = ["/bin/false"], timeout_s = 60 }}

[[models]]
match = "*"

[[models.policies]]
kind = "drift_window"
window = 3
threshold = 0.5
"#,
            toml_path(&sb.path("ingest.sock")),
            toml_path(&sb.path("control.sock")),
            toml_path(&sb.path("state")),
        ),
    );
    // m1: drift 1.0 at every line; m2: drift 0.0 (never fires)
    let mut lines = Vec::new();
    for i in 0..5 {
        lines.push(json!({"model_id": "m1", "drift_score": 1.0, "ts": 1764172800 + i}).to_string());
        lines.push(json!({"model_id": "m2", "drift_score": 0.0, "ts": 1764172800 + i}).to_string());
    }
    let ev = sb.write("events.jsonl", &(lines.join("\n") + "\n"));
    let o = sb.run(&[
        "backtest",
        "--config",
        cfg.to_str().unwrap(),
        ev.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", out_text(&o));
    let out = stdout(&o);
    let got: Vec<Value> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("non-JSON line {l:?}: {e}\n{}", out_text(&o)))
        })
        .collect();
    // m1's window of 3 is full from its 3rd event on: input indices 4, 6, 8
    let expect: Vec<Value> = [4, 6, 8]
        .iter()
        .map(|&i| json!({"index": i, "model_id": "m1", "policy": "drift_window", "signal": "drift", "action": "full"}))
        .collect();
    let trimmed: Vec<Value> = got
        .iter()
        .map(|v| {
            json!({"index": v["index"], "model_id": v["model_id"], "policy": v["policy"],
                   "signal": v["signal"], "action": v["action"]})
        })
        .collect();
    assert_eq!(trimmed, expect, "backtest output:\n{out}");
    // no socket, no state
    assert!(!sb.path("ingest.sock").exists());
    let state_empty = std::fs::read_dir(sb.path("state"))
        .map(|mut r| r.next().is_none())
        .unwrap_or(true);
    assert!(state_empty, "backtest wrote state");
}

#[test]
fn ingest_socket_mode_is_0660() {
    let d = Daemon::start_default();
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "ingest socket mode {mode:o}");
}

#[test]
fn output_into_a_closed_pipe_is_neither_a_panic_nor_an_error() {
    let sb = Sandbox::new();
    for args in [&["completions", "bash"][..], &["manpage"][..]] {
        let mut child = sb
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the writer has written anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
    }
}
