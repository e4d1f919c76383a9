//! Issue 12: defects a new user and operator met, each pinned by the test that failed before
//! its fix (the non-reading client is in `hostile.rs`).

use serde_json::{Value, json};

use crate::support::*;

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// 12.2: Python's `json.dumps(float("nan"))` writes `NaN`; the reply says what it is and what
/// to send instead.
#[test]
fn nan_and_infinity_get_a_detail_that_names_them() {
    let d = Daemon::start_default();
    let mut c = d.connect();
    c.send_line(r#"{"model_id":"m","drift_score":NaN}"#);
    c.send_line(r#"{"model_id":"m","accuracy":Infinity}"#);
    c.send_line(r#"{"model_id":"m","drift_score":0.1}"#);
    let (flush, errors) = c.flush_with_errors();
    assert_flush(&flush, 1, 2);
    for (e, token, line) in [(&errors[0], "NaN", 1), (&errors[1], "Infinity", 2)] {
        assert_error(e, &["bad_json"], line);
        let detail = e["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("{token} at column"))
                && detail.contains("not a JSON number")
                && detail.contains("omit the field or send null"),
            "{detail}"
        );
    }
}

/// 12.9: a `ts` in milliseconds is refused with a hint; an old `ts` is kept for the policies
/// but `last_seen` is the time of receipt.
#[test]
fn a_ts_in_milliseconds_is_refused_and_an_old_ts_does_not_age_last_seen() {
    let d = Daemon::start_default();
    let mut c = d.connect();
    let ms = (now() * 1000.0).round();
    c.send_json(&json!({"model_id": "m", "ts": ms, "drift_score": 0.1}));
    // Ten years ago, and an hour ahead (clock skew): both accepted.
    c.send_json(&json!({"model_id": "m", "ts": now() - 315_360_000.0, "drift_score": 0.1}));
    c.send_json(&json!({"model_id": "skew", "ts": now() + 3600.0, "drift_score": 0.1}));
    let (flush, errors) = c.flush_with_errors();
    assert_flush(&flush, 2, 1);
    assert_error(&errors[0], &["bad_field"], 1);
    let detail = errors[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("more than a day ahead") && detail.contains("milliseconds"),
        "{detail}"
    );
    let models = d.models_json();
    let m = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model_id"] == json!("m"))
        .unwrap();
    let last_seen = m["last_seen"].as_f64().unwrap();
    assert!(
        (now() - last_seen).abs() < 120.0,
        "last_seen {last_seen} is not the time of receipt ({})",
        now()
    );
    // It survives a crash (the observation log keeps the time of receipt).
    let mut d = d;
    d.kill_and_restart();
    let models = d.models_json();
    let m = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model_id"] == json!("m"))
        .unwrap();
    assert_eq!(m["last_seen"].as_f64(), Some(last_seen), "{m}");
}

fn policies_of(d: &Daemon, model: &str) -> Vec<serde_json::Value> {
    d.models_json()
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model_id"] == json!(model))
        .unwrap_or_else(|| d.fail(format!("no model {model}")))["policies"]
        .as_array()
        .unwrap()
        .clone()
}

/// 12.4: a reload that changes a policy's metric starts it afresh (it kept the window of drift
/// scores and averaged accuracies into it); an unchanged policy keeps its state; the log says
/// which was reset and why.
#[test]
fn a_reload_that_changes_a_policys_metric_starts_it_afresh() {
    let rules = |metric: &str| {
        format!(
            r#"
[[models]]
match = "*"
[[models.policies]]
name = "win"
kind = "drift_window"
metric = "{metric}"
window = 5
threshold = 2.0
[[models.policies]]
name = "kept"
kind = "drift_window"
window = 5
threshold = 2.0
"#
        )
    };
    let d = Daemon::builder().body(rules("drift_score")).start();
    let mut c = d.connect();
    for _ in 0..5 {
        c.send_json(&json!({"model_id": "m", "drift_score": 0.9, "accuracy": 0.2}));
    }
    c.flush();
    let states = |d: &Daemon| -> Vec<String> {
        policies_of(d, "m")
            .iter()
            .map(|p| p["summary"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        states(&d).iter().all(|s| s.starts_with("window 5/5")),
        "{:?}",
        states(&d)
    );

    d.write_config(&ConfigParts {
        daemon_extra: String::new(),
        body: rules("accuracy"),
    });
    d.sighup();
    d.wait_for("the reload", || {
        d.logs().contains("config reloaded").then_some(())
    });
    c.send_json(&json!({"model_id": "m", "drift_score": 0.9, "accuracy": 0.2}));
    c.flush();
    let s = states(&d);
    assert!(s[0].starts_with("window 1/5, mean 0.2"), "{s:?}");
    assert!(s[1].starts_with("window 5/5, mean 0.9"), "{s:?}");
    let logs = d.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("reload: the policy starts afresh"))
        .unwrap_or_else(|| d.fail("no reload line names the reset policy"));
    assert!(
        line.contains("policy=win") && line.contains("metric changed from drift_score to accuracy"),
        "{line}"
    );
    assert!(
        !logs.contains("policy=kept reason"),
        "an unchanged policy was reported reset"
    );
}

/// 12.7: "mean accuracy over the window below 0.85" and "latency above 50 ms" are one policy
/// each; check-config warns about an accuracy window that looks upward.
#[test]
fn windows_look_down_and_static_thresholds_bound_any_metric() {
    let d = Daemon::builder()
        .body(
            r#"
[[models]]
match = "*"
[[models.policies]]
name = "acc-low"
kind = "drift_window"
metric = "accuracy"
direction = "below"
window = 4
threshold = 0.85
[[models.policies]]
name = "slow"
kind = "static_threshold"
metric = "latency_ms"
max = 50.0
action = "fine_tune"
"#,
        )
        .start();
    let mut c = d.connect();
    // Good accuracy and latency: nothing fires.
    for _ in 0..8 {
        c.send_json(&json!({"model_id": "m", "accuracy": 0.95, "metrics": {"latency_ms": 12.0}}));
    }
    c.flush();
    let fired = |d: &Daemon, policy: &str| -> f64 {
        d.cli_ok(&["metrics"])
            .lines()
            .filter(|l| {
                l.starts_with("visutility_decisions_total{")
                    && l.contains(&format!("policy=\"{policy}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(fired(&d, "acc-low"), 0.0);
    assert_eq!(fired(&d, "slow"), 0.0);
    for _ in 0..4 {
        c.send_json(&json!({"model_id": "m", "accuracy": 0.7, "metrics": {"latency_ms": 80.0}}));
    }
    c.flush();
    assert!(
        fired(&d, "acc-low") > 0.0,
        "a window of low accuracy did not fire"
    );
    assert!(fired(&d, "slow") > 0.0, "latency above max did not fire");
    let policies = policies_of(&d, "m");
    assert!(
        policies[0]["summary"]
            .as_str()
            .unwrap()
            .contains("below threshold 0.85"),
        "{policies:?}"
    );

    let cfg = d.sb.write(
        "upward.toml",
        r#"
[[models]]
match = "*"
[[models.policies]]
kind = "drift_window"
metric = "accuracy"
threshold = 0.5
[[models.policies]]
kind = "static_threshold"
min_accuracy = 1.5
"#,
    );
    let out = d.cli(&["check-config", cfg.to_str().unwrap()]);
    let text = combined(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning:")
            && text.contains("models[0].policies[0].direction")
            && text.contains("direction = \"below\""),
        "{text}"
    );
    assert!(
        text.contains("models[0].policies[1].min_accuracy"),
        "{text}"
    );
    // max/min need a metric; max below min is refused.
    let bad = d.sb.write(
        "bad.toml",
        r#"
[[models]]
match = "*"
[[models.policies]]
kind = "static_threshold"
max = 1.0
[[models.policies]]
kind = "static_threshold"
name = "b"
metric = "value"
max = 1.0
min = 2.0
"#,
    );
    let out = d.cli(&["check-config", bad.to_str().unwrap()]);
    let text = combined(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("set metric") && text.contains("max (1) is below min (2)"),
        "{text}"
    );
}

/// 12.8: a policy that stays over its threshold is one INFO line when it starts firing and
/// one when it stops (with the count), not a line per event.
#[test]
fn a_policy_that_keeps_firing_logs_when_it_starts_and_stops() {
    let d = Daemon::builder()
        .body(
            r#"
[[models]]
match = "*"
[[models.policies]]
kind = "static_threshold"
max_drift = 0.3
"#,
        )
        .start();
    let mut c = d.connect();
    // One event per batch (a flush after each), as a slow model server sends them.
    for _ in 0..40 {
        c.send_json(&json!({"model_id": "m", "drift_score": 0.9}));
        c.flush();
    }
    for _ in 0..3 {
        c.send_json(&json!({"model_id": "m", "drift_score": 0.1}));
        c.flush();
    }
    let logs = d.wait_for("the stop line", || {
        let l = d.logs();
        l.contains("policy stopped firing").then_some(l)
    });
    let info: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(" INFO ") && l.contains("model_id=m"))
        .collect();
    let started: Vec<&&str> = info
        .iter()
        .filter(|l| l.contains("policy started firing"))
        .collect();
    let stopped: Vec<&&str> = info
        .iter()
        .filter(|l| l.contains("policy stopped firing"))
        .collect();
    assert_eq!(started.len(), 1, "{info:#?}");
    assert_eq!(stopped.len(), 1, "{info:#?}");
    assert!(stopped[0].contains("events=40"), "{}", stopped[0]);
    assert!(
        started[0].contains("drift_score 0.9 > max_drift 0.3"),
        "{}",
        started[0]
    );
    assert!(
        info.len() <= 3,
        "INFO lines about model m beyond start and stop: {info:#?}"
    );
}

/// 12.10: `backtest -` reads standard input; an id no rule matches is warned about, once.
#[test]
fn backtest_reads_stdin_and_an_unmatched_id_is_warned_once() {
    let d = Daemon::builder()
        .body(
            r#"
[[models]]
match = "fraud-*"
[[models.policies]]
kind = "static_threshold"
max_drift = 0.3
"#,
        )
        .start();
    let events = "{\"model_id\":\"fraud-1\",\"drift_score\":0.9}\n{\"model_id\":\"fruad-2\",\"drift_score\":0.9}\n";
    let out = d.cli_stdin(&["backtest", "-"], events.as_bytes());
    let text = stdout(&out);
    assert!(out.status.success(), "{}", combined(&out));
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["model_id"], json!("fraud-1"));

    let mut c = d.connect();
    for _ in 0..3 {
        c.send_json(&json!({"model_id": "fruad-2", "drift_score": 0.9}));
        c.flush();
    }
    let warned = d.wait_for("the warning", || {
        let n = d
            .logs()
            .lines()
            .filter(|l| l.contains("no [[models]] rule matches") && l.contains("fruad-2"))
            .count();
        (n > 0).then_some(n)
    });
    assert_eq!(warned, 1);
}

/// 12.3: operator commands refuse an id the daemon has never seen (no phantom model, no real
/// hook run for a typo) unless given `--create`; `forget` removes a model for good, frees its
/// `max_models` slot, keeps its jobs, and is refused while it has a job running.
#[test]
fn unknown_ids_are_refused_and_forget_removes_a_model_for_good() {
    let b = Daemon::builder().daemon_keys("max_models = 2");
    let hook = b.recording_hook("hook", 0);
    let cmd = hook.command_toml(&[]);
    let mut d = b.body(QUIET_BODY.replace(r#"["/bin/true"]"#, &cmd)).start();
    for args in [
        &["reset", "typo-1"][..],
        &["pause", "never-seen"],
        &["resume", "never-seen"],
        &["trigger", "nonexistent", "full"],
        &["forget", "nonexistent"],
    ] {
        let o = d.cli(args);
        let text = combined(&o);
        assert!(!o.status.success(), "{args:?} succeeded: {text}");
        assert!(text.contains("unknown model"), "{args:?}: {text}");
        assert_eq!(text.trim().lines().count(), 1, "{args:?}: {text}");
    }
    assert_eq!(hook.started(), 0, "a typo ran the real hook");
    assert_eq!(d.models_json(), json!([]));
    assert_eq!(d.status_json()["models"], json!(0));

    // Two real models fill max_models = 2; the typos took no slot.
    d.push_events(&[plain_event("a"), plain_event("b")]);
    let mut c = d.connect();
    c.send_line(&plain_event("c"));
    let (flush, errors) = c.flush_with_errors();
    assert_flush(&flush, 0, 1);
    assert_error(&errors[0], &["too_many_models"], 1);

    // A job for a, then forget a: its slot frees, its job stays in the history.
    d.cli_ok(&["trigger", "a", "full"]);
    d.wait_job(Some("a"), "a's job", |j| j["state"] == "succeeded");
    d.cli_ok(&["pause", "a"]);
    d.cli_ok(&["forget", "a"]);
    let ids: Vec<Value> = d
        .models_json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model_id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("b")]);
    assert_eq!(d.history(Some("a")).len(), 1, "the journal lost a's job");
    assert_eq!(
        d.status_json()["paused"],
        json!([]),
        "a's runner record stayed"
    );
    c.send_line(&plain_event("c"));
    let (flush, _) = c.flush_with_errors();
    assert_eq!(flush["accepted"], json!(1), "{flush}");

    // Gone for good: a crash right after does not bring it back.
    drop(c);
    d.kill_and_restart();
    let ids: Vec<Value> = d
        .models_json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model_id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("b"), json!("c")]);
    assert_eq!(d.status_json()["models"], json!(2));

    // Refused while a job runs.
    hook.close_gate();
    d.cli_ok(&["trigger", "b", "full"]);
    d.wait_for("b's hook to start", || (hook.started() >= 2).then_some(()));
    let o = d.cli(&["forget", "b"]);
    let text = combined(&o);
    assert!(
        !o.status.success() && text.contains("job running"),
        "{text}"
    );
    hook.open_gate();

    // --create pre-arms a model that has not sent yet.
    let o = d.cli(&["pause", "--create", "fresh"]);
    assert!(
        !o.status.success(),
        "max_models full, yet --create made a third model"
    );
    d.cli_ok(&["forget", "c"]);
    d.cli_ok(&["pause", "--create", "fresh"]);
    assert_eq!(d.status_json()["paused"], json!(["fresh"]));
}

/// 12.5: a typo in the config file on disk must not lock the operator out: the commands read
/// the socket paths anyway (with a warning), and take `--control-socket` / `--socket` and
/// environment overrides.
#[test]
fn a_broken_config_on_disk_does_not_lock_the_operator_out() {
    let d = Daemon::start_default();
    d.push_events(&[plain_event("m1")]);
    let good = std::fs::read_to_string(&d.config_path).unwrap();
    std::fs::write(
        &d.config_path,
        good.replace("[daemon]", "[daemon]\ntreshold = 1"),
    )
    .unwrap();
    let o = d.cli(&["status"]);
    assert!(
        o.status.success(),
        "status with a broken config: {}",
        combined(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning:") && err.contains("treshold") && err.contains("check-config"),
        "{err}"
    );
    let o = d.cli(&["pause", "m1"]);
    assert!(o.status.success(), "{}", combined(&o));

    // Pointing at the sockets directly: no config needed at all.
    let ctl = d.control_socket.to_str().unwrap().to_owned();
    let o = d.sb.run(&[
        "--config",
        "/nonexistent.toml",
        "--control-socket",
        &ctl,
        "resume",
        "m1",
    ]);
    assert!(o.status.success(), "{}", combined(&o));
    let mut cmd =
        d.sb.command(&["--config", "/nonexistent.toml", "models", "--json"]);
    cmd.env("VISUTILITY_CONTROL_SOCKET", &ctl);
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", combined(&o));
    let events = d.sb.write("e.ndjson", &(plain_event("m1") + "\n"));
    let mut cmd = d.sb.command(&["--config", "/nonexistent.toml", "push"]);
    cmd.arg(&events).env("VISUTILITY_SOCKET", &d.socket);
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", combined(&o));
    assert_eq!(d.events_of("m1"), 2);
}

/// 12.10: `history --limit 0` lists nothing, `models MODEL` shows one model, and the history
/// table says which policy asked for each job and why.
#[test]
fn history_and_models_small_fixes() {
    let b = Daemon::builder();
    let hook = b.recording_hook("hook", 0);
    let cmd = hook.command_toml(&[]);
    let d = b.body(QUIET_BODY.replace(r#"["/bin/true"]"#, &cmd)).start();
    d.push_events(&[plain_event("m1"), plain_event("m2")]);
    d.cli_ok(&["trigger", "m1", "full"]);
    d.wait_job(Some("m1"), "the job", |j| j["state"] == "succeeded");
    assert_eq!(d.cli_json(&["history", "--limit", "0"]), json!([]));
    assert_eq!(
        d.cli_json(&["history", "--limit", "1"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let one = d.cli_json(&["models", "m2"]);
    let ids: Vec<&Value> = one
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["model_id"])
        .collect();
    assert_eq!(ids, vec![&json!("m2")]);
    let o = d.cli(&["models", "nope"]);
    assert!(!o.status.success() && combined(&o).contains("unknown model"));
    let table = d.cli_ok(&["history"]);
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("POLICY") && header.contains("REASON"),
        "{table}"
    );
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.contains("manual") && row.contains("triggered by an operator"),
        "{table}"
    );
}
